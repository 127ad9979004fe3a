"""Self-tests of tools/report: the report's readers: names, broken inputs, pytest JUnit files.

The fixtures (testdata/) are described in fixtures.py.
"""

import os
import re
import shutil
import tempfile

from absl.testing import absltest

from tools.report import rank_logs
from tools.report.files import read_text
from tools.report.names import TAG_TO_DEVICE, target_metadata
from tools.report.pytest_junit import parse_pytest_junit
from tools.report.query import parse_query_xml
from tools.report.rank_logs import split_sections
from tools.report.testlogs import drop_stale, scan_testlogs

from tools.report.tests.fixtures import (
    CPU,
    BROKEN,
    QUERY,
    JUNIT,
    bazel_target,
    case_record,
    html_cells,
    md_row,
    run_cli,
    section,
    write_cases,
    write_file,
)


class NameParsingTest(absltest.TestCase):
    def test_target_metadata_from_query_tags(self):
        # generator_name is the behaviour; the device tag and ws<N> the rest.
        self.assertEqual(
            target_metadata("odd_name", ["gpu", "ws4", "fsdp"], "multiple_forward_test"),
            ("multiple_forward_test", "cuda", 4),
        )
        self.assertEqual(target_metadata("x_test_cpu", ["cpu", "ws2"]), ("x_test_cpu", "cpu", 2))
        self.assertEqual(target_metadata("odd_target", ["gpu"]), ("odd_target", "cuda", None))
        self.assertEqual(target_metadata("no_device", ["ws2"]), ("no_device", "other", 2))
        self.assertEqual(TAG_TO_DEVICE, {"cpu": "cpu", "gpu": "cuda", "hpu": "hpu", "xpu": "xpu"})

    def test_rank_log_sections(self):
        text = (
            "==== rank 0 of 2 starting (pid 7) ====\nhello\n"
            "==== __main__.A.test_a_fsdp1 ====\na1\n"
            "==== __main__.A.test_b_fsdp1 ====\nb1\nb2\n"
        )
        secs = split_sections(text)
        self.assertEqual(
            [t for t, _ in secs],
            ["rank 0 of 2 starting (pid 7)", "__main__.A.test_a_fsdp1", "__main__.A.test_b_fsdp1"],
        )
        self.assertEqual(secs[2][1], "==== __main__.A.test_b_fsdp1 ====\nb1\nb2\n")
        self.assertTrue(
            rank_logs._id_matches("fsdp.x_test.A.test_a_fsdp1", "__main__.A", "test_a_fsdp1")
        )
        self.assertFalse(
            rank_logs._id_matches("__main__.A.test_a_fsdp10", "__main__.A", "test_a_fsdp1")
        )


class BrokenInputsTest(absltest.TestCase):
    """Bad or partial results become cells and problems, never a crash."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rc, cls.out, cls.html, cls.md = run_cli(
            "--testlogs", BROKEN, "--query_xml", os.path.join(BROKEN, "query.xml")
        )
        problems = re.search(r'<h2 id="problems">(.*?)</ul>', cls.html, re.S)
        cls.problems = problems.group(1)

    def test_exit_zero(self):
        self.assertEqual(self.rc, 0, self.out)

    def _whole_target_cell(self, behaviour):
        start = re.search(r'<th colspan="\d+">%s<' % behaviour, self.html).start()
        m = re.compile(r'<th class="rowhead mono">\(whole target\)</th>(.*?)</tr>', re.S).search(
            self.html, start
        )
        self.assertIsNotNone(m, behaviour)
        return re.findall(r"<td [^>]*>.*?</td>", m.group(1), re.S)[0]

    def test_malformed_xml(self):
        cell = self._whole_target_cell("malformed_test")
        self.assertIn("MALFORMED", cell)
        self.assertIn("malformed_test_cpu/test.xml</code>: malformed XML", self.problems)

    def test_missing_xml(self):
        cell = self._whole_target_cell("missing_xml_test")
        self.assertIn("NO RESULT", cell)
        anchor = re.search(r'href="#(r\d+)"', cell).group(1)
        self.assertIn("Segmentation fault", section(self.html, anchor))
        self.assertIn("test.log without test.xml", self.problems)

    def test_crash_xml_written_by_bazel(self):
        cell = self._whole_target_cell("crash_test")
        self.assertIn("FAIL", cell)
        detail = section(self.html, re.search(r'href="#(r\d+)"', cell).group(1))
        self.assertIn("exited with error code 134", detail)
        # Bazel's own test.xml: the failure is the target's, not a test method's.
        self.assertIn("(no per-test results)", detail)
        self.assertIn("Fatal Python error: Aborted", detail)  # log tail
        # The last section of the rank log: the test that was running.
        self.assertIn("last test: __main__.CrashTest.test_abort_fsdp2", detail)
        self.assertIn("about to all_gather", detail)

    def test_missing_shards(self):
        self.assertIn(
            "//fsdp:partial_shard_test_cpu shard 2/3</code>: shard has no result directory",
            self.problems,
        )
        self.assertIn("shard 3/3", self.problems)
        cells = html_cells(self.html, "test_one")
        self.assertIn("st-pass", cells[0])
        self.assertIn("NO RESULT", self._whole_target_cell("partial_shard_test"))

    def test_flaky_runs(self):
        cells = html_cells(self.html, "test_sometimes")
        self.assertIn("FLAKY 1/3", cells[0])
        detail = section(self.html, re.search(r'href="#(r\d+)"', cells[0]).group(1))
        self.assertIn("run 2/3", detail)
        self.assertIn("timed out waiting for rank 1", detail)
        self.assertIn("(1/3 failed)", md_row(self.md, "test_sometimes")[0])

    def test_empty_xml_bad_zip_bad_env(self):
        self.assertIn("test.xml has no test cases", self.problems)
        self.assertIn("cannot read outputs.zip", self.problems)
        self.assertIn("bad environment.json", self.problems)
        # The corrupt outputs.zip held the case's record: the row is its JUnit name.
        self.assertIn("FAIL", html_cells(self.html, "test_x_fsdp1")[0])  # still reported
        self.assertIn("PASS", html_cells(self.html, "test_y")[0])

    def test_other_packages_ignored(self):
        self.assertNotIn("test_should_be_ignored", self.html)

    def test_summary_counts_problems(self):
        self.assertRegex(
            self.out,
            r"\d+ passed, \d+ failed, 0 disabled, 0 not "
            r"run, 1 flaky, \d+ without result, 1 malformed",
        )
        self.assertIn("## Problems reading results", self.md)


class PytestJunitTest(absltest.TestCase):
    def test_merged_with_bazel_run(self):
        rc, out, html_text, md = run_cli(
            "--testlogs", CPU, "--junit", JUNIT + ":xpu", "--query_xml", QUERY
        )
        self.assertEqual(rc, 0)
        heads = re.findall(r'<tr class="dev">(.*?)</tr>', html_text, re.S)[0]
        self.assertRegex(heads, r"(?s)cpu.*cuda.*xpu")
        cells = html_cells(html_text, "test_matches_ddp")
        self.assertIn("st-not-run", cells[2])  # cuda: in the query, not run
        self.assertIn("st-pass", cells[4])  # xpu fsdp1
        self.assertIn("st-fail", cells[5])  # xpu fsdp2
        detail = section(html_text, re.search(r'href="#(r\d+)"', cells[5]).group(1))
        self.assertIn("losses diverge from DDP at step 0 (xpu)", detail)
        self.assertIn("junit:pytest_xpu.xml", detail)
        self.assertIn("SKIPPED", html_cells(html_text, "test_backward_after_two_forwards")[4])
        # A device only in JUnit (no xpu targets in the query): not run, not n/a.
        self.assertIn("NOT RUN", html_cells(html_text, "test_no_extra_allgather")[2])
        rt = html_cells(html_text, "test_roundtrip")
        self.assertIn("st-pass", rt[4])
        self.assertIn("st-fail", rt[5])  # <error> counts as failure
        self.assertIn("ccl backend not available", html_text)
        self.assertIn("pytest JUnit (xpu)", md)

    def test_subpackage_rows_environment_and_params_beside_junit(self):
        tmp = tempfile.mkdtemp()
        junit = os.path.join(tmp, "cuda.xml")
        write_file(
            junit,
            '<testsuites><testsuite name="pytest">'
            '<testcase classname="fsdp.training.parity_test.ParityTest" '
            'name="test_matches_fsdp2[ws2]" time="0.5"/>'
            '<testcase classname="fsdp.training.parity_test.ParityTest" '
            'name="test_matches_a[ws2]" time="0.5"/></testsuite></testsuites>',
        )
        write_file(
            os.path.join(tmp, "environment.json"),
            '{"torch_version": "2.11.0+cu130", "device_names": ["NVIDIA H200"]}',
        )
        cls = "fsdp.training.parity_test.ParityTest"
        where = dict(file="fsdp/training/parity_test.py", device="cuda")
        write_cases(
            tmp,
            case_record(cls, "test_matches_fsdp2", "test_matches", "fsdp2", **where),
            case_record(cls, "test_matches_a", "test_matches_a", "fsdp1", **where),
        )
        col = parse_pytest_junit(junit, "cuda")
        self.assertEqual([r.behaviour for r in col.results], ["training/parity_test"] * 2)
        self.assertEqual(
            [(r.method, r.api) for r in col.results],
            [("test_matches", "fsdp2"), ("test_matches_a", "fsdp1")],
        )
        self.assertEqual(col.environments[0][1]["torch_version"], "2.11.0+cu130")
        shutil.rmtree(tmp)

    def test_api_and_metadata_from_query_and_records(self):
        """A target named against the convention, methods without an API token."""
        tmp = tempfile.mkdtemp()
        bazel_target(
            tmp,
            "renamed_target",
            '<testsuites><testsuite name="T">'
            '<testcase name="test_round_trip_a" classname="__main__.T" '
            'time="0.1"/><testcase name="test_round_trip_b" '
            'classname="__main__.T" time="0.1"/></testsuite></testsuites>',
            case_record("__main__.T", "test_round_trip_a", "test_round_trip_a", "fsdp1", 4),
            case_record("__main__.T", "test_round_trip_b", "test_round_trip_b", "fsdp2", 4),
        )
        query = (
            '<query version="2"><rule class="py_test" '
            'name="//fsdp:renamed_target"><string name="generator_name" '
            'value="round_trip_test"/><list name="tags"><string value="xpu"/>'
            '<string value="ws4"/></list></rule></query>'
        )
        col = parse_query_xml(query, "query")
        col.merge(scan_testlogs(tmp, targets=col.targets))
        shutil.rmtree(tmp)
        self.assertEqual(
            sorted((r.behaviour, r.device, r.ws, r.method, r.api) for r in col.results),
            [
                ("round_trip_test", "xpu", 4, "test_round_trip_a", "fsdp1"),
                ("round_trip_test", "xpu", 4, "test_round_trip_b", "fsdp2"),
            ],
        )

    def test_results_of_deleted_targets_are_dropped_with_a_note(self):
        col = parse_query_xml(read_text(QUERY), QUERY)
        col.merge(scan_testlogs(CPU))
        gone = sorted({r.label for r in col.results})[0]
        del col.targets[gone]
        col = drop_stale(col)
        self.assertNotIn(gone, {r.label for r in col.results})
        self.assertIn(gone, col.notes[-1])

    def test_bad_junit_is_a_problem(self):
        tmp = tempfile.mkdtemp()
        bad = os.path.join(tmp, "bad.xml")
        write_file(bad, "<testsuites><testcase")
        rc, out, html_text, _ = run_cli(
            "--junit", bad + ":cuda", "--junit", os.path.join(tmp, "gone.xml:cuda")
        )
        shutil.rmtree(tmp)
        self.assertEqual(rc, 0)
        self.assertIn("malformed JUnit XML", html_text)
        self.assertIn("JUnit file not found", html_text)


if __name__ == "__main__":
    absltest.main()
