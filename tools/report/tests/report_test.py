"""Self-tests of tools/report against the XML fixtures in testdata/.

testdata/query.xml  bazel query --output=xml of a small //fsdp suite (one target
                    disabled with a reason, one API-specific target never run)
testdata/cpu/       testlogs of a CPU run: all pass, a sharded _ws4 target,
                    rank logs and environment.json as plain files
testdata/cuda/      testlogs of a CUDA run: one failure, rank logs and
                    environment.json inside test.outputs/outputs.zip
testdata/broken/    malformed / missing / empty XML, a crash (Bazel's own
                    test.xml), a missing shard, a flaky --runs_per_test target,
                    a corrupt outputs.zip, a bad environment.json, and a
                    target outside //fsdp
testdata/pytest_xpu.xml  pytest --junitxml from a host without Bazel
testdata/known_bugs/     testlogs with known torch bugs (known_failures.json):
                    precision/unfreeze_test_cpu from a real absl run (expected
                    failure written as a pass; a made-up bug on the FSDP1 case
                    that did not reproduce), outputs in outputs.zip;
                    no_sync_test_cpu hand-written, plain test.outputs/: a
                    --known_failures=strict failure and a pass on a release
                    outside seen_on
testdata/pytest_known_bugs/  the same unfreeze run through pytest (xfail, and
                    "Unexpected success"), with known_failures.json beside it
NotRunTest writes its own small fixtures (not_run.json under Bazel and beside JUnit).
"""

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest

from tools.report import collect, model, render_md, report

_HERE = os.path.dirname(os.path.abspath(__file__))
_TOOL = os.path.dirname(_HERE)

DATA = os.path.join(_HERE, "testdata")
CPU = os.path.join(DATA, "cpu")
CUDA = os.path.join(DATA, "cuda")
BROKEN = os.path.join(DATA, "broken")
QUERY = os.path.join(DATA, "query.xml")
JUNIT = os.path.join(DATA, "pytest_xpu.xml")
KNOWN = os.path.join(DATA, "known_bugs")
KNOWN_JUNIT = os.path.join(DATA, "pytest_known_bugs", "results.xml")
UNFREEZE = "test_unfrozen_unit_keeps_reduce_dtype"


def write_file(path, text):
    """Writes ``text`` to ``path``."""
    with open(path, "w") as f:
        f.write(text)


def run_cli(*args):
    """Runs report.main in-process; returns (exit code, stdout, html, md)."""
    out = tempfile.mkdtemp()
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        try:
            rc = report.main(list(args) + ["--out", out, "--no_bazel_query"])
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    html_text = md_text = ""
    if os.path.exists(os.path.join(out, "report.html")):
        with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
            html_text = f.read()
        with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
            md_text = f.read()
    shutil.rmtree(out)
    return rc, buf.getvalue() + err.getvalue(), html_text, md_text


def html_cells(html_text, row_method):
    """The <td> cells of the first matrix row whose heading is row_method."""
    m = re.search(
        r'<th class="rowhead mono">%s</th>(.*?)</tr>' % re.escape(row_method), html_text, re.S
    )
    assert m, "row %r not in HTML" % row_method
    return re.findall(r"<td [^>]*>.*?</td>", m.group(1), re.S)


def section(html_text, anchor):
    m = re.search(r'<section class="detail" id="%s">(.*?)</section>' % anchor, html_text, re.S)
    assert m, "no detail section %s" % anchor
    return m.group(1)


def md_row(md_text, row_method):
    for line in md_text.splitlines():
        if line.startswith("| &nbsp;&nbsp;`%s`" % row_method):
            return [c.strip() for c in line.strip("|").split(" | ")][1:]
    raise AssertionError("row %r not in Markdown" % row_method)


class NameParsingTest(absltest.TestCase):
    def test_api_from_method_names(self):
        cases = {
            "test_matches_ddp_fsdp1": ("test_matches_ddp", "fsdp1"),
            "test_fsdp2_state_dict": ("test_state_dict", "fsdp2"),
            "test_x0 (api='fsdp1')": ("test_x", "fsdp1"),
            "test_p1 (api='fsdp2', dtype='bf16')": ("test_p (dtype='bf16')", "fsdp2"),
            "test_plain1 ('fsdp2')": ("test_plain", "fsdp2"),
            "test_y[fsdp1-bf16]": ("test_y[bf16]", "fsdp1"),
            "test_no_api": ("test_no_api", None),
            "test_fsdp12_is_not_an_api": ("test_fsdp12_is_not_an_api", None),
        }
        for name, want in cases.items():
            self.assertEqual(model.split_api(name), want, name)

    def test_target_metadata_from_query_tags(self):
        # generator_name is the behaviour; the device tag and ws<N> the rest.
        self.assertEqual(
            model.target_metadata("odd_name", ["gpu", "ws4", "fsdp"], "multiple_forward_test"),
            ("multiple_forward_test", "cuda", 4),
        )
        self.assertEqual(model.target_metadata("x_test_cpu", ["cpu", "ws2"]), ("x_test", "cpu", 2))
        self.assertEqual(model.target_metadata("odd_target", ["gpu"]), ("odd_target", "cuda", None))
        self.assertEqual(
            model.TAG_TO_DEVICE, {"cpu": "cpu", "gpu": "cuda", "hpu": "hpu", "xpu": "xpu"}
        )

    def test_target_names_without_query(self):
        self.assertEqual(
            model.parse_target_name("multiple_forward_test_cpu"),
            ("multiple_forward_test", "cpu", None),
        )
        self.assertEqual(
            model.parse_target_name("uneven_sharding_test_cpu_ws4"),
            ("uneven_sharding_test", "cpu", 4),
        )
        self.assertEqual(model.parse_target_name("odd_target"), ("odd_target", "other", None))

    def test_api_from_recorded_parameter(self):
        # The recorded parameter wins over the name; the name's token still goes.
        self.assertEqual(
            model.split_api("test_dcp_round_trip_a", "fsdp2"), ("test_dcp_round_trip_a", "fsdp2")
        )
        self.assertEqual(model.split_api("test_x_fsdp1", "fsdp1"), ("test_x", "fsdp1"))

    def test_rank_log_sections(self):
        text = (
            "==== rank 0 of 2 starting (pid 7) ====\nhello\n"
            "==== __main__.A.test_a_fsdp1 ====\na1\n"
            "==== __main__.A.test_b_fsdp1 ====\nb1\nb2\n"
        )
        secs = collect.split_sections(text)
        self.assertEqual(
            [t for t, _ in secs],
            ["rank 0 of 2 starting (pid 7)", "__main__.A.test_a_fsdp1", "__main__.A.test_b_fsdp1"],
        )
        self.assertEqual(secs[2][1], "==== __main__.A.test_b_fsdp1 ====\nb1\nb2\n")
        self.assertTrue(
            collect._id_matches("fsdp.x_test.A.test_a_fsdp1", "__main__.A", "test_a_fsdp1")
        )
        self.assertFalse(
            collect._id_matches("__main__.A.test_a_fsdp10", "__main__.A", "test_a_fsdp1")
        )


class MergedRunTest(absltest.TestCase):
    """CPU + CUDA testlogs and the query XML: the realistic report."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rc, cls.out, cls.html, cls.md = run_cli(
            "--testlogs", CPU, "--testlogs", CUDA, "--query_xml", QUERY
        )

    def test_exit_code_and_summary(self):
        self.assertEqual(self.rc, 0)  # failures do not fail the report
        self.assertIn("34 passed, 1 failed, 2 disabled, 1 not run, 1 skipped", self.out)
        self.assertIn("report.html", self.out)
        self.assertIn("report.md", self.out)

    def test_columns_are_device_by_api(self):
        heads = re.findall(r'<tr class="api">(.*?)</tr>', self.html, re.S)[0]
        self.assertEqual(
            re.findall(r"<th[^>]*>(.*?)</th>", heads), ["fsdp1", "fsdp2", "fsdp1", "fsdp2"]
        )
        self.assertIn(
            "| behaviour / test | cpu fsdp1 | cpu fsdp2 | cuda fsdp1 | cuda fsdp2 |", self.md
        )

    def test_pass_cells_with_duration(self):
        cells = html_cells(self.html, "test_backward_after_two_forwards")
        self.assertLen(cells, 4)
        for c in cells:
            self.assertIn("st-pass", c)
            self.assertIn("PASS", c)  # readable without colour
        self.assertIn("3.41s", cells[0])
        self.assertIn("3.15s", cells[1])
        self.assertEqual(
            md_row(self.md, "test_backward_after_two_forwards")[0], "\u2705 pass 3.41s"
        )

    def test_api_neutral_method_spans_api_columns(self):
        cells = html_cells(self.html, "test_no_extra_allgather")
        self.assertLen(cells, 2)
        self.assertIn('colspan="2"', cells[0])

    def test_parameterized_rows(self):
        cells = html_cells(self.html, "test_param_dtype (dtype=&#x27;bfloat16&#x27;)")
        self.assertLen(cells, 4)
        self.assertTrue(all("st-pass" in c for c in cells))

    def test_failure_cell_links_to_message_and_rank_logs(self):
        cells = html_cells(self.html, "test_matches_ddp")
        self.assertIn("st-pass", cells[2])
        fail = cells[3]
        self.assertIn("st-fail", fail)
        self.assertIn("FAIL", fail)
        anchor = re.search(r'href="#(r\d+)"', fail).group(1)
        self.assertIn("losses diverge from DDP", fail)  # tooltip + cell
        detail = section(self.html, anchor)
        self.assertIn("multiple_forward_test", detail)
        self.assertIn("cuda", detail)
        self.assertIn("__main__.MultipleForwardTest.test_matches_ddp_fsdp2", detail)
        self.assertIn("max abs diff 4.1e-04", detail)  # message
        self.assertIn("assertLossesClose", detail)  # traceback
        self.assertIn("rank 0 log", detail)
        self.assertIn("rank 1 log", detail)
        self.assertIn("[rank1] reduce-scatter output differs", detail)
        # Only the failing test's section of the rank logs.
        self.assertNotIn("test_backward_after_two_forwards", detail)
        self.assertNotIn("init_process_group", detail)
        # Markdown links to the same anchor.
        self.assertIn("\u274c [FAIL](#%s)" % anchor, md_row(self.md, "test_matches_ddp")[3])
        self.assertIn('<a id="%s"></a>FAIL: multiple_forward_test' % anchor, self.md)
        self.assertIn("[rank0] reduce-scatter output differs", self.md)

    def test_disabled_target_shows_reason(self):
        cells = html_cells(self.html, "test_checkpoint_wrapper")
        self.assertIn("st-pass", cells[0])
        for c in cells[2:]:
            self.assertIn("DISABLED", c)
            self.assertIn("hangs in NCCL all-gather with torch 2.5 (issue 14)", c)
        self.assertIn("disabled: hangs in NCCL", md_row(self.md, "test_checkpoint_wrapper")[2])
        self.assertIn("//fsdp:activation_checkpointing_test_cuda</code> \u2014 hangs", self.html)

    def test_api_specific_target_not_run(self):
        m = re.search(r"hybrid_shard_test<.*?</tr>(.*?)</tr>", self.html, re.S)
        cells = re.findall(r"<td [^>]*>.*?</td>", m.group(1), re.S)
        self.assertEqual(
            [re.search(r'class="cell (st-[\w-]+)', c).group(1) for c in cells],
            ["st-na", "st-na", "st-na", "st-not-run"],
        )
        self.assertIn("NOT RUN", cells[3])

    def test_sharded_target_merges_shards(self):
        for method in ("test_uneven_params", "test_padding_grads"):
            cells = html_cells(self.html, method)
            self.assertTrue(all("st-pass" in c for c in cells), method)

    def test_skipped(self):
        cells = html_cells(self.html, "test_sharded_optim_state")
        self.assertIn("SKIPPED", cells[0])

    def test_environment_header(self):
        self.assertIn("2.5.1+cu124", self.html)
        self.assertIn("2.5.1+cpu", self.html)
        self.assertIn("2\u00d7 NVIDIA H100 80GB HBM3", self.html)
        self.assertIn("nccl", self.html)
        self.assertIn("results come from different torch builds", self.html)
        # One row per device environment; both world sizes of the CPU run.
        self.assertRegex(self.html, r"gloo</td><td>2, 4</td>")
        self.assertIn(
            "| cuda | `2.5.1+cu124` | 2\u00d7 NVIDIA H100 80GB HBM3 | 2 | nccl | 2 |", self.md
        )

    def test_html_is_self_contained(self):
        self.assertIn("<style>", self.html)
        self.assertNotRegex(self.html, r"<script|<link|src=\"http|@import")
        self.assertIn("Problems reading results (0)", self.html)


class BrokenInputsTest(absltest.TestCase):
    """Bad or partial results become cells and problems, never a crash."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rc, cls.out, cls.html, cls.md = run_cli("--testlogs", BROKEN)
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
        self.assertIn("FAIL", html_cells(self.html, "test_x")[0])  # still reported
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
            'name="test_matches_fsdp2" time="0.5"/>'
            '<testcase classname="fsdp.training.parity_test.ParityTest" '
            'name="test_matches_a" time="0.5"/></testsuite></testsuites>',
        )
        write_file(
            os.path.join(tmp, "environment.json"),
            '{"torch_version": "2.11.0+cu130", "device_names": ["NVIDIA H200"]}',
        )
        write_file(
            os.path.join(tmp, "test_params.json"), '{"ParityTest.test_matches_a": {"api": "fsdp1"}}'
        )
        col = collect.parse_pytest_junit(junit, "cuda")
        self.assertEqual([r.behaviour for r in col.results], ["training/parity_test"] * 2)
        self.assertEqual(
            [(r.method, r.api) for r in col.results],
            [("test_matches", "fsdp2"), ("test_matches_a", "fsdp1")],
        )
        self.assertEqual(col.environments[0][1]["torch_version"], "2.11.0+cu130")
        shutil.rmtree(tmp)

    def test_api_and_metadata_from_query_and_test_params(self):
        """A target named against the convention, a method without an API token."""
        tmp = tempfile.mkdtemp()
        target = os.path.join(tmp, "fsdp", "renamed_target")
        os.makedirs(os.path.join(target, "test.outputs"))
        write_file(
            os.path.join(target, "test.xml"),
            '<testsuites><testsuite name="T">'
            '<testcase name="test_round_trip_a" classname="__main__.T" '
            'time="0.1"/><testcase name="test_round_trip_b" '
            'classname="__main__.T" time="0.1"/></testsuite></testsuites>',
        )
        write_file(
            os.path.join(target, "test.outputs", "test_params.json"),
            '{"T.test_round_trip_a": {"api": "fsdp1", "n": 2},'
            ' "T.test_round_trip_b": {"api": "fsdp2"}}',
        )
        query = (
            '<query version="2"><rule class="py_test" '
            'name="//fsdp:renamed_target"><string name="generator_name" '
            'value="round_trip_test"/><list name="tags"><string value="xpu"/>'
            '<string value="ws4"/></list></rule></query>'
        )
        col = collect.parse_query_xml(query, "query")
        col.merge(collect.scan_testlogs(tmp, targets=col.targets))
        shutil.rmtree(tmp)
        self.assertEqual(
            sorted((r.behaviour, r.device, r.ws, r.method, r.api) for r in col.results),
            [
                ("round_trip_test", "xpu", 4, "test_round_trip_a", "fsdp1"),
                ("round_trip_test", "xpu", 4, "test_round_trip_b", "fsdp2"),
            ],
        )

    def test_results_of_deleted_targets_are_dropped_with_a_note(self):
        col = collect.parse_query_xml(collect._read_text(QUERY), QUERY)
        col.merge(collect.scan_testlogs(CPU))
        gone = sorted({r.label for r in col.results})[0]
        del col.targets[gone]
        col = collect.drop_stale(col)
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


def cell_status(cell_html):
    return re.search(r'class="cell (st-[\w-]+)', cell_html).group(1)


class KnownTorchBugTest(absltest.TestCase):
    """known_failures.json: known torch bugs are failures, with their issue."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rc, cls.out, cls.html, cls.md = run_cli(
            "--testlogs", KNOWN, "--junit", KNOWN_JUNIT + ":cuda"
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
        cell = html_cells(self.html, UNFREEZE)[1]  # cpu fsdp2
        self.assertEqual(cell_status(cell), "st-known-bug")
        self.assertIn("KNOWN BUG", cell)
        self.assertNotIn("PASS", cell)
        self.assertIn("pytorch#186998: FSDP2 resolves", cell)
        detail = section(self.html, re.search(r'href="#(r\d+)"', cell).group(1))
        self.assertIn("KNOWN BUG", detail)
        self.assertIn(
            '<a href="https://github.com/pytorch/pytorch/issues/186998">pytorch#186998</a>', detail
        )
        self.assertIn("a unit frozen then gets the param dtype", detail)
        self.assertIn("seen on torch 2.13 \u00b7 this run: torch 2.13, failed as expected", detail)

    def test_strict_failure_is_a_known_bug_with_its_message(self):
        cells = html_cells(self.html, "test_accumulates")
        self.assertEqual(cell_status(cells[0]), "st-known-bug")
        detail = section(self.html, re.search(r'href="#(r\d+)"', cells[0]).group(1))
        self.assertIn("expected 4.0, got 2.0", detail)
        self.assertIn("this run: torch 2.13, failed<", detail)
        # Passed on a release outside seen_on: a pass, with a note.
        self.assertEqual(cell_status(cells[1]), "st-pass")
        self.assertIn("pytorch#556 did not occur on torch 2.13 (seen on torch 2.11)", cells[1])

    def test_pytest_xfail_is_a_known_bug_not_a_skip(self):
        cell = html_cells(self.html, UNFREEZE)[3]  # cuda fsdp2 (pytest)
        self.assertEqual(cell_status(cell), "st-known-bug")
        detail = section(self.html, re.search(r'href="#(r\d+)"', cell).group(1))
        self.assertIn("pytorch#186998", detail)
        self.assertIn("junit:results.xml", detail)
        self.assertIn("\U0001f41e [KNOWN BUG](#", md_row(self.md, UNFREEZE)[3])
        self.assertIn("pytorch#186998", md_row(self.md, UNFREEZE)[3])

    def test_known_bug_that_did_not_reproduce_is_a_fail(self):
        for i in (0, 2):  # cpu fsdp1 (absl), cuda fsdp1 (pytest)
            cell = html_cells(self.html, UNFREEZE)[i]
            self.assertEqual(cell_status(cell), "st-fail", i)
            self.assertIn("known bug did not reproduce", cell)
            detail = section(self.html, re.search(r'href="#(r\d+)"', cell).group(1))
            self.assertIn("passed on torch 2.13, and example/repo#7 was seen on torch 2.13", detail)
            self.assertIn("this run: torch 2.13, passed", detail)
        self.assertIn("\u274c [FAIL](#", md_row(self.md, UNFREEZE)[0])

    def test_markdown_details(self):
        self.assertIn(
            "KNOWN BUG: precision/unfreeze_test \u203a " + UNFREEZE + " \u2014 cpu \u00b7 fsdp2",
            self.md,
        )
        self.assertIn(
            "**Known torch bug [pytorch#186998](https://github.com/"
            "pytorch/pytorch/issues/186998)**",
            self.md,
        )
        self.assertIn("seen on torch 2.11, 2.13 \u00b7 this run: torch 2.13, failed", self.md)

    def test_xfail_without_record_is_still_a_known_bug(self):
        tmp = tempfile.mkdtemp()
        shutil.copy(KNOWN_JUNIT, tmp)  # no known_failures.json beside it
        col = collect.parse_pytest_junit(os.path.join(tmp, "results.xml"), "cuda")
        shutil.rmtree(tmp)
        by_api = {r.api: r for r in col.results}
        self.assertEqual(by_api["fsdp2"].status, model.KNOWN_BUG)
        self.assertEqual(by_api["fsdp2"].message, "expected failure (pytest xfail)")
        self.assertIsNone(by_api["fsdp2"].known_bug)
        self.assertEqual(by_api["fsdp1"].status, model.FAIL)  # Unexpected success
        rep = model.build_report(col)
        self.assertEqual(rep.counts.get(model.KNOWN_BUG), 1)
        self.assertNotIn(model.SKIPPED, rep.counts)
        self.assertIn("expected failure (pytest xfail)", render_md.render(rep))

    def test_stale_record_beside_junit_is_ignored(self):
        tmp = tempfile.mkdtemp()
        for name in ("results.xml", "known_failures.json"):
            shutil.copy(os.path.join(os.path.dirname(KNOWN_JUNIT), name), tmp)
        known = os.path.join(tmp, "known_failures.json")
        os.utime(known, (0, 0))  # written long before this run began
        col = collect.parse_pytest_junit(os.path.join(tmp, "results.xml"), "cuda")
        shutil.rmtree(tmp)
        self.assertEqual(
            [p.message for p in col.problems], ["older than the JUnit run it sits beside; ignored"]
        )
        self.assertTrue(all(r.known_bug is None for r in col.results))

    def test_recorded_failure_message_is_shown(self):
        r = model.TestResult(
            label="l", behaviour="b", device="cpu", method="m", status=model.PASS, test_id="A.m"
        )
        model.apply_known_failure(
            r,
            {
                "issue": "pytorch#1",
                "summary": "s",
                "seen_on": "2.13",
                "torch": "2.13",
                "outcome": "failed as expected",
                "message": "rank 0: grad dtype bf16",
            },
        )
        self.assertEqual(r.status, model.KNOWN_BUG)
        self.assertEqual(
            r.message, "known torch bug pytorch#1: s (seen on torch 2.13)\nrank 0: grad dtype bf16"
        )

    def test_without_records_absl_expected_failure_is_a_pass(self):
        """What the records are for: absl's XML alone cannot tell."""
        results = collect.parse_bazel_xml(
            collect._read_text(
                os.path.join(KNOWN, "fsdp", "precision", "unfreeze_test_cpu", "test.xml")
            ),
            source="x",
            label="//fsdp/precision:unfreeze_test_cpu",
            behaviour="precision/unfreeze_test",
            device="cpu",
            ws=2,
            bazel_name="fsdp/precision/unfreeze_test_cpu",
            problems=[],
        )
        self.assertEqual([r.status for r in results], [model.FAIL, model.PASS])

    def test_bad_records_are_problems(self):
        problems = []
        self.assertEqual(collect.read_known_failures("[1]", "k", problems), {})
        recs = collect.read_known_failures(
            '{"A.test_a": {"outcome": "exploded"}, "A.test_b": {"outcome": '
            '"failed", "issue": "x#1"}}',
            "k",
            problems,
        )
        self.assertEqual(list(recs), ["A.test_b"])
        self.assertEqual(
            [p.message for p in problems],
            [
                "bad known_failures.json: not an object of objects",
                "known_failures.json: A.test_a has outcome 'exploded'",
            ],
        )

    def test_issue_links(self):
        self.assertEqual(
            model.issue_url("pytorch#12"), "https://github.com/pytorch/pytorch/issues/12"
        )
        self.assertEqual(model.issue_url("a/b#3"), "https://github.com/a/b/issues/3")
        self.assertEqual(model.issue_url("https://x.org/1"), "https://x.org/1")
        self.assertEqual(model.issue_url("internal bug 5"), "")


class NotRunTest(absltest.TestCase):
    """Cases that do not apply on the host: NOT RUN cells with the reason, never skips."""

    REASON = "valid at world size even, not 1: a 2-D mesh halves the world"

    def test_bazel_skip_explained_by_not_run_json(self):
        # absl writes a skip as status="notrun" with no reason; the harness's record has it.
        tmp = tempfile.mkdtemp()
        target = os.path.join(tmp, "fsdp", "mesh_test_cuda_ws1")
        os.makedirs(os.path.join(target, "test.outputs"))
        write_file(
            os.path.join(target, "test.xml"),
            '<testsuites><testsuite name="MeshTest">'
            '<testcase name="test_mesh_fsdp2" status="notrun" result="suppressed" time="0.0" '
            'classname="__main__.MeshTest"/>'
            '<testcase name="test_flat_fsdp2" status="run" result="completed" time="0.5" '
            'classname="__main__.MeshTest"/></testsuite></testsuites>',
        )
        write_file(
            os.path.join(target, "test.outputs", "not_run.json"),
            '{"cases": [{"classname": "__main__.MeshTest", "method": "test_mesh_fsdp2", '
            '"device": "cuda", "world_size": 1, "reason": "%s"}]}' % self.REASON,
        )
        rc, out, html_text, md = run_cli("--testlogs", tmp)
        shutil.rmtree(tmp)
        self.assertEqual(rc, 0)
        self.assertIn("1 passed, 0 failed, 0 disabled, 1 not run", out)
        self.assertNotIn("skipped", out)
        cells = html_cells(html_text, "test_mesh")
        self.assertIn("NOT RUN", "".join(cells))
        self.assertIn("ws1: " + self.REASON, "".join(cells))
        self.assertIn("not run: ws1: valid at world size even", md_row(md, "test_mesh")[0])

    def test_pytest_sizes_share_a_row_and_left_out_cases_come_from_the_record(self):
        tmp = tempfile.mkdtemp()
        junit = os.path.join(tmp, "results.xml")
        cls = "fsdp.hsdp.mesh_test.MeshTest"
        write_file(
            junit,
            '<testsuites><testsuite name="pytest">'
            '<testcase classname="%s" name="test_mesh_fsdp2[ws2]" time="0.5"/>'
            '<testcase classname="%s" name="test_flat_fsdp2[ws1]" time="0.5">'
            '<skipped type="pytest.skip" message="not run: needs 2 cuda devices, 1 visible"/>'
            "</testcase></testsuite></testsuites>" % (cls, cls),
        )
        write_file(
            os.path.join(tmp, "not_run.json"),
            '{"cases": [{"classname": "%s", "method": "test_mesh_fsdp2", "device": "cuda", '
            '"world_size": 1, "reason": "%s"}]}' % (cls, self.REASON),
        )
        col = collect.parse_pytest_junit(junit, "cuda")
        shutil.rmtree(tmp)
        by_case = {(r.method, r.ws): r for r in col.results}
        self.assertEqual(
            {k: (r.status, r.message) for k, r in by_case.items()},
            {
                ("test_mesh", 2): (model.PASS, ""),
                ("test_mesh", 1): (model.NOT_RUN, self.REASON),
                ("test_flat", 1): (model.NOT_RUN, "needs 2 cuda devices, 1 visible"),
            },
        )
        rep = model.build_report(col)
        self.assertEqual((rep.counts.get(model.PASS), rep.counts.get(model.NOT_RUN)), (1, 1))
        self.assertNotIn(model.SKIPPED, rep.counts)
        mesh = next(row for g in rep.groups for row in g.rows if row.method == "test_mesh")
        cell = next(c for c in mesh.cells.values() if c.status == model.PASS)
        self.assertEqual(cell.notes, ["not run at ws1: " + self.REASON])

    def test_bad_record_is_a_problem(self):
        problems = []
        self.assertEqual(collect.not_run_records.read('{"cases": [{}]}', "n", problems), [])
        self.assertIn("bad not_run.json", problems[0].message)


class CliTest(absltest.TestCase):
    def test_usage_errors(self):
        self.assertEqual(run_cli("--testlogs", "/nonexistent/dir")[0], 2)
        self.assertEqual(run_cli("--junit", JUNIT)[0], 2)  # no :DEVICE
        self.assertEqual(run_cli("--testlogs", CPU, "--query_xml", "/nope.xml")[0], 2)
        self.assertEqual(run_cli("--bogus_flag")[0], 2)

    def test_without_query_partial_run_shows_not_run(self):
        rc, out, html_text, md = run_cli("--testlogs", CUDA)
        self.assertEqual(rc, 0)
        self.assertIn("disabled targets are not shown", html_text)
        # Only the CUDA run: no CPU column at all, failure still reported.
        self.assertNotIn("cpu fsdp1", md)
        self.assertIn("1 failed", out)

    def test_devices_filter(self):
        rc, out, _, md = run_cli(
            "--testlogs", CPU, "--testlogs", CUDA, "--query_xml", QUERY, "--devices", "cuda"
        )
        self.assertEqual(rc, 0)
        self.assertIn("| behaviour / test | cuda fsdp1 | cuda fsdp2 |", md)
        self.assertIn("1 failed", out)

    def test_malformed_query_xml(self):
        tmp = tempfile.mkdtemp()
        q = os.path.join(tmp, "q.xml")
        write_file(q, "<query><rule")
        rc, out, html_text, _ = run_cli("--testlogs", CPU, "--query_xml", q)
        shutil.rmtree(tmp)
        self.assertEqual(rc, 0)
        self.assertIn("cannot parse query XML", html_text)

    def test_bazel_query_absent(self):
        text, why = collect.run_bazel_query(tempfile.gettempdir())
        self.assertIsNone(text)
        self.assertIn("tools/bazel not found", why)

    def test_escaping(self):
        tmp = tempfile.mkdtemp()
        d = os.path.join(tmp, "fsdp", "esc_test_cpu")
        os.makedirs(d)
        write_file(
            os.path.join(d, "test.xml"),
            '<testsuites><testsuite name="E"><testcase name="test_e_fsdp1" '
            'classname="__main__.E" time="1"><failure message="a|b &lt;'
            'script&gt;x">tb</failure></testcase></testsuite></testsuites>',
        )
        rc, _, html_text, md = run_cli("--testlogs", tmp)
        shutil.rmtree(tmp)
        self.assertEqual(rc, 0)
        self.assertNotIn("<script>", html_text)
        self.assertIn("a|b &lt;script&gt;x", html_text)
        self.assertNotIn("<script>", md.split("## Failures")[0])

    def test_script_runs_standalone(self):
        out = tempfile.mkdtemp()
        proc = subprocess.run(
            [
                sys.executable,
                os.path.join(_TOOL, "report.py"),
                "--testlogs",
                CPU,
                "--testlogs",
                CUDA,
                "--query_xml",
                QUERY,
                "--no_bazel_query",
                "--out",
                out,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertTrue(os.path.exists(os.path.join(out, "report.html")))
        self.assertTrue(
            proc.stdout.strip().endswith("34 passed, 1 failed, 2 disabled, 1 not run, 1 skipped")
        )
        shutil.rmtree(out)


if __name__ == "__main__":
    absltest.main()
