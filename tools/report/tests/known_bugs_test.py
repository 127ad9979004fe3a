"""Self-tests of tools/report: known torch bugs and not-run cases in the report.

The fixtures (testdata/) are described in fixtures.py.
"""

import json
import os
import re
import shutil
import tempfile

from absl.testing import absltest

from tools.report import case_records, collected, render_md
from tools.report.files import read_text
from tools.report.junit import parse_bazel_xml
from tools.report.known_bugs import apply_known_failure, issue_url
from tools.report.matrix import build_report
from tools.report.pytest_junit import parse_pytest_junit
from tools.report.status import FAIL, KNOWN_BUG, NOT_RUN, PASS, SKIPPED

from tools.report.tests import fixtures


class KnownTorchBugTest(absltest.TestCase):
    """known_bug in cases.json: known torch bugs are failures, with their issue."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rc, cls.out, cls.html, cls.md = fixtures.run_cli(
            "--testlogs", fixtures.KNOWN, "--junit", fixtures.KNOWN_JUNIT + ":cuda"
        )

    def test_summary_counts_known_bugs_as_failures(self):
        self.assertEqual(self.rc, 0)
        self.assertIn("1 passed, 5 failed (3 known torch bugs), 0 disabled, 2 not run", self.out)
        self.assertNotIn("skipped", self.out)  # the pytest xfail is no skip
        self.assertIn("<b>5</b>failed", self.html)
        self.assertIn("<b>3</b>of these: known torch bugs", self.html)

    def test_expected_failure_in_absl_xml_is_a_known_bug_cell(self):
        # absl writes the expected failure as a passing testcase; the record in
        # outputs.zip says it failed.
        cell = fixtures.html_cells(self.html, fixtures.UNFREEZE)[1]  # cpu fsdp2
        self.assertEqual(fixtures.cell_status(cell), "st-known-bug")
        self.assertIn("KNOWN BUG", cell)
        self.assertNotIn("PASS", cell)
        self.assertIn("pytorch#186998: FSDP2 resolves", cell)
        detail = fixtures.section(self.html, re.search(r'href="#(r\d+)"', cell).group(1))
        self.assertIn("KNOWN BUG", detail)
        self.assertIn(
            '<a href="https://github.com/pytorch/pytorch/issues/186998">pytorch#186998</a>', detail
        )
        self.assertIn("a unit frozen then gets the param dtype", detail)
        self.assertIn(
            "affects torch &gt;=2.10,&lt;2.14.1, fixed by pytorch#187376 \u00b7 "
            "this run: torch 2.13.0+cpu, failed as expected",
            detail,
        )

    def test_strict_failure_is_a_known_bug_with_its_message(self):
        cells = fixtures.html_cells(self.html, "test_accumulates")
        self.assertEqual(fixtures.cell_status(cells[0]), "st-known-bug")
        detail = fixtures.section(self.html, re.search(r'href="#(r\d+)"', cells[0]).group(1))
        self.assertIn("expected 4.0, got 2.0", detail)
        self.assertIn("this run: torch 2.13.0+cpu, failed<", detail)
        # Passed on a release outside its range: a pass, with a note.
        self.assertEqual(fixtures.cell_status(cells[1]), "st-pass")
        self.assertIn(
            "pytorch#556 did not occur on torch 2.13.0+cpu "
            "(torch 2.13.0 is outside &gt;=2.11,&lt;2.12)",
            cells[1],
        )

    def test_pytest_xfail_is_a_known_bug_not_a_skip(self):
        cell = fixtures.html_cells(self.html, fixtures.UNFREEZE)[3]  # cuda fsdp2 (pytest)
        self.assertEqual(fixtures.cell_status(cell), "st-known-bug")
        detail = fixtures.section(self.html, re.search(r'href="#(r\d+)"', cell).group(1))
        self.assertIn("pytorch#186998", detail)
        self.assertIn("junit:results.xml", detail)
        self.assertIn("\U0001f41e [KNOWN BUG](#", fixtures.md_row(self.md, fixtures.UNFREEZE)[3])
        self.assertIn("pytorch#186998", fixtures.md_row(self.md, fixtures.UNFREEZE)[3])

    def test_known_bug_that_did_not_reproduce_is_a_fail(self):
        for i in (0, 2):  # cpu fsdp1 (absl), cuda fsdp1 (pytest)
            cell = fixtures.html_cells(self.html, fixtures.UNFREEZE)[i]
            self.assertEqual(fixtures.cell_status(cell), "st-fail", i)
            self.assertIn("known bug did not reproduce", cell)
            detail = fixtures.section(self.html, re.search(r'href="#(r\d+)"', cell).group(1))
            self.assertIn(
                "passed on torch 2.13.0+cpu, where example/repo#7 applies "
                "(affects torch &gt;=2.13)",
                detail,
            )
            self.assertIn("this run: torch 2.13.0+cpu, passed", detail)
        self.assertIn("\u274c [FAIL](#", fixtures.md_row(self.md, fixtures.UNFREEZE)[0])

    def test_markdown_details(self):
        self.assertIn(
            "KNOWN BUG: precision/unfreeze_test \u203a "
            + fixtures.UNFREEZE
            + " \u2014 cpu \u00b7 fsdp2",
            self.md,
        )
        self.assertIn(
            "**Known torch bug [pytorch#186998](https://github.com/"
            "pytorch/pytorch/issues/186998)**",
            self.md,
        )
        self.assertIn("affects torch &gt;=2.11 \u00b7 this run: torch 2.13.0+cpu, failed", self.md)

    def test_xfail_without_record_is_still_a_known_bug(self):
        tmp = tempfile.mkdtemp()
        shutil.copy(fixtures.KNOWN_JUNIT, tmp)  # no cases.json beside it
        col = parse_pytest_junit(os.path.join(tmp, "results.xml"), "cuda")
        shutil.rmtree(tmp)
        # Without its record a case keeps its JUnit name and has no API.
        by_name = {r.method: r for r in col.results}
        fsdp2, fsdp1 = (
            by_name[fixtures.UNFREEZE + "_fsdp2[ws2]"],
            by_name[fixtures.UNFREEZE + "_fsdp1[ws2]"],
        )
        self.assertEqual(fsdp2.status, KNOWN_BUG)
        self.assertEqual(fsdp2.message, "expected failure (pytest xfail)")
        self.assertIsNone(fsdp2.known_bug)
        self.assertEqual(fsdp1.status, FAIL)  # Unexpected success
        rep = build_report(col)
        self.assertEqual(rep.counts.get(KNOWN_BUG), 1)
        self.assertNotIn(SKIPPED, rep.counts)
        self.assertIn("expected failure (pytest xfail)", render_md.render(rep))

    def test_stale_record_beside_junit_is_ignored(self):
        tmp = tempfile.mkdtemp()
        for name in ("results.xml", "cases.json"):
            shutil.copy(os.path.join(os.path.dirname(fixtures.KNOWN_JUNIT), name), tmp)
        os.utime(os.path.join(tmp, "cases.json"), (0, 0))  # written long before this run
        col = parse_pytest_junit(os.path.join(tmp, "results.xml"), "cuda")
        shutil.rmtree(tmp)
        self.assertEqual(
            [p.message for p in col.problems], ["older than the JUnit run it sits beside; ignored"]
        )
        self.assertTrue(all(r.known_bug is None for r in col.results))

    def test_recorded_failure_message_is_shown(self):
        r = collected.TestResult(
            label="l", behaviour="b", device="cpu", method="m", status=PASS, test_id="A.m"
        )
        apply_known_failure(
            r,
            {
                "issue": "pytorch#1",
                "summary": "s",
                "affected": ">=2.13",
                "torch": "2.13.0",
                "outcome": "failed as expected",
                "message": "rank 0: grad dtype bf16",
            },
        )
        self.assertEqual(r.status, KNOWN_BUG)
        self.assertEqual(
            r.message,
            "known torch bug pytorch#1: s (affects torch >=2.13)\nrank 0: grad dtype bf16",
        )

    def test_without_records_absl_expected_failure_is_a_pass(self):
        """What the records are for: absl's XML alone cannot tell."""
        results = parse_bazel_xml(
            read_text(
                os.path.join(fixtures.KNOWN, "fsdp", "precision", "unfreeze_test_cpu", "test.xml")
            ),
            source="x",
            label="//fsdp/precision:unfreeze_test_cpu",
            behaviour="precision/unfreeze_test",
            device="cpu",
            ws=2,
            bazel_name="fsdp/precision/unfreeze_test_cpu",
            problems=[],
        )
        self.assertEqual([r.status for r in results], [FAIL, PASS])

    def test_bad_records_are_problems(self):
        problems = []
        self.assertEqual(case_records.read("[1]", "k", problems), [])
        good = fixtures.case_record(
            "__main__.A", "test_b", "test_b", None, known_bug={"outcome": "failed"}
        )
        bad = fixtures.case_record(
            "__main__.A", "test_a", "test_a", None, known_bug={"outcome": "exploded"}
        )
        cases = case_records.read(json.dumps({"cases": [bad, good]}), "k", problems)
        self.assertEqual([c["known_bug"] for c in cases], [None, {"outcome": "failed"}])
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("bad cases.json: ", problems[0].message)
        self.assertEqual(
            problems[1].message, "cases.json: A.test_a has known_bug {'outcome': 'exploded'}"
        )

    def test_issue_links(self):
        self.assertEqual(issue_url("pytorch#12"), "https://github.com/pytorch/pytorch/issues/12")
        self.assertEqual(issue_url("a/b#3"), "https://github.com/a/b/issues/3")
        self.assertEqual(issue_url("https://x.org/1"), "https://x.org/1")
        self.assertEqual(issue_url("internal bug 5"), "")


class NotRunTest(absltest.TestCase):
    """Cases that do not apply on the host: NOT RUN cells with the reason, never skips."""

    REASON = "valid at world size even, not 1: a 2-D mesh halves the world"

    def test_bazel_skip_explained_by_the_record(self):
        # absl writes a skip as status="notrun" with no reason; the harness's record has it.
        tmp = tempfile.mkdtemp()
        where = dict(world_size=1, device="cuda", file="fsdp/mesh_test.py")
        fixtures.bazel_target(
            tmp,
            "mesh_test_cuda_ws1",
            '<testsuites><testsuite name="MeshTest">'
            '<testcase name="test_mesh_fsdp2" status="notrun" result="suppressed" time="0.0" '
            'classname="__main__.MeshTest"/>'
            '<testcase name="test_flat_fsdp2" status="run" result="completed" time="0.5" '
            'classname="__main__.MeshTest"/></testsuite></testsuites>',
            fixtures.case_record(
                "__main__.MeshTest",
                "test_mesh_fsdp2",
                "test_mesh",
                "fsdp2",
                not_run=self.REASON,
                **where,
            ),
            fixtures.case_record(
                "__main__.MeshTest", "test_flat_fsdp2", "test_flat", "fsdp2", **where
            ),
        )
        rc, out, html_text, md = fixtures.run_cli("--testlogs", tmp)
        shutil.rmtree(tmp)
        self.assertEqual(rc, 0)
        self.assertIn("1 passed, 0 failed, 0 disabled, 1 not run", out)
        self.assertNotIn("skipped", out)
        cells = fixtures.html_cells(html_text, "test_mesh")
        self.assertIn("NOT RUN", "".join(cells))
        self.assertIn("ws1: " + self.REASON, "".join(cells))
        self.assertIn("not run: ws1: valid at world size even", fixtures.md_row(md, "test_mesh")[0])

    def test_pytest_sizes_share_a_row_and_left_out_cases_come_from_the_record(self):
        tmp = tempfile.mkdtemp()
        junit = os.path.join(tmp, "results.xml")
        cls = "fsdp.hsdp.mesh_test.MeshTest"
        fixtures.write_file(
            junit,
            '<testsuites><testsuite name="pytest">'
            '<testcase classname="%s" name="test_mesh_fsdp2[ws2]" time="0.5"/>'
            '<testcase classname="%s" name="test_flat_fsdp2[ws1]" time="0.5">'
            '<skipped type="pytest.skip" message="not run: needs 2 cuda devices, 1 visible"/>'
            "</testcase></testsuite></testsuites>" % (cls, cls),
        )
        where = dict(device="cuda", file="fsdp/hsdp/mesh_test.py")
        fixtures.write_cases(
            tmp,
            fixtures.case_record(cls, "test_mesh_fsdp2", "test_mesh", "fsdp2", 2, **where),
            fixtures.case_record(
                cls, "test_mesh_fsdp2", "test_mesh", "fsdp2", 1, not_run=self.REASON, **where
            ),
            fixtures.case_record(cls, "test_flat_fsdp2", "test_flat", "fsdp2", 1, **where),
        )
        col = parse_pytest_junit(junit, "cuda")
        shutil.rmtree(tmp)
        by_case = {(r.method, r.ws): r for r in col.results}
        self.assertEqual(
            {k: (r.status, r.message) for k, r in by_case.items()},
            {
                ("test_mesh", 2): (PASS, ""),
                ("test_mesh", 1): (NOT_RUN, self.REASON),
                ("test_flat", 1): (NOT_RUN, "needs 2 cuda devices, 1 visible"),
            },
        )
        rep = build_report(col)
        self.assertEqual((rep.counts.get(PASS), rep.counts.get(NOT_RUN)), (1, 1))
        self.assertNotIn(SKIPPED, rep.counts)
        mesh = next(row for g in rep.groups for row in g.rows if row.method == "test_mesh")
        cell = next(c for c in mesh.cells.values() if c.status == PASS)
        self.assertEqual(cell.notes, ["not run at ws1: " + self.REASON])

    def test_bad_record_is_a_problem(self):
        problems = []
        self.assertEqual(case_records.read('{"cases": [{}]}', "n", problems), [])
        self.assertIn("bad cases.json", problems[0].message)


if __name__ == "__main__":
    absltest.main()
