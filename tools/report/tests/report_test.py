"""Self-tests of tools/report end to end: merged CPU, CUDA and pytest runs, and the CLI.

The fixtures (testdata/) are described in fixtures.py.
"""

import html
import os
import re
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest

from tools.report.query import run_bazel_query

from tools.report.tests.fixtures import (
    TOOL,
    CPU,
    CUDA,
    QUERY,
    JUNIT,
    html_cells,
    md_row,
    run_cli,
    section,
    write_file,
)


def _report_of_one_failure(message, text):
    """Runs the report on one target with one failing case; (exit code, HTML, Markdown)."""
    tmp = tempfile.mkdtemp()
    d = os.path.join(tmp, "fsdp", "one_test_cpu")
    os.makedirs(d)
    write_file(
        os.path.join(d, "test.xml"),
        '<testsuites><testsuite name="E"><testcase name="test_e_fsdp1" '
        'classname="__main__.E" time="1"><failure message="%s">%s</failure>'
        "</testcase></testsuite></testsuites>" % (message, text),
    )
    rc, _, html_text, md = run_cli("--testlogs", tmp)
    shutil.rmtree(tmp)
    return rc, html_text, md


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
        cells = html_cells(self.html, "test_param_dtype (dtype=&#39;bfloat16&#39;)")
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
        self.assertIn("target //fsdp:hybrid_shard_test_cuda has no result", cells[3])
        self.assertIn(
            "not run: target //fsdp:hybrid_shard_test_cuda has no result",
            md_row(self.md, "(whole target)")[3],
        )

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

    def test_large_target_without_result_says_it_was_left_out(self):
        # The same suite with the CUDA hybrid-shard target tagged large: a run of the
        # default set leaves it out, and its cell must say so rather than look lost.
        tmp = tempfile.mkdtemp()
        query = os.path.join(tmp, "query.xml")
        with open(QUERY) as f:
            text = f.read()
        tagged = text.replace(
            '<string value="requires-multi-device"/>',
            '<string value="requires-multi-device"/><string value="large"/>',
        )
        self.assertNotEqual(tagged, text)
        write_file(query, tagged)
        rc, _, html_text, md = run_cli("--testlogs", CPU, "--testlogs", CUDA, "--query_xml", query)
        shutil.rmtree(tmp)
        self.assertEqual(rc, 0)
        why = "large target, left out of this run (--config=large runs it)"
        self.assertIn("not run: " + why, md_row(md, "(whole target)")[3])
        self.assertIn(why, html_text)

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
        text, why = run_bazel_query(tempfile.gettempdir())
        self.assertIsNone(text)
        self.assertIn("tools/bazel not found", why)

    def test_escaping(self):
        rc, html_text, md = _report_of_one_failure("a|b &lt;script&gt;x", "tb")
        self.assertEqual(rc, 0)
        self.assertNotIn("<script>", html_text)
        self.assertIn("a|b &lt;script&gt;x", html_text)
        self.assertNotIn("<script>", md.split("## Failures")[0])

    def test_sandbox_and_environment_prefixes_are_cut(self):
        sandbox = (
            "/root/.cache/bazel/_bazel_root/0123/sandbox/processwrapper-sandbox/41/execroot/"
            "fsdp_conformance/bazel-out/k8-fastbuild/bin/fsdp/p_test_cpu.runfiles/"
            "fsdp_conformance/"
        )
        venv = "/root/.cache/fsdp-conformance/venv-0123/lib/python3.11/site-packages/"
        trace = (
            'File "%sfsdp/p_test.py", line 7, in test_p\n'
            'File "%storch/distributed/fsdp/_fully_shard/_fsdp_param.py", line 9\n'
            'File "/root/.pyenv/versions/3.11.7/lib/python3.11/unittest/case.py", line 3\n'
            'File "/home/ci/checkout/testing/fsdp/parity.py", line 5\n'
            'File "%s' % (sandbox, venv, sandbox.split(".runfiles")[0][:-4])
        )
        rc, html_text, md = _report_of_one_failure("differs at %sfsdp/p_test.py" % sandbox, trace)
        self.assertEqual(rc, 0)
        for text in (html.unescape(html_text), md):
            self.assertNotIn("/sandbox/", text)  # also in the path cut short at its end
            self.assertNotIn("venv-0123", text)
            self.assertIn('File "fsdp/p_test.py", line 7', text)
            self.assertIn("differs at fsdp/p_test.py", text)
            self.assertIn('File "site-packages/torch/distributed/fsdp/_fully_shard/', text)
            self.assertIn('File "python3.11/unittest/case.py", line 3', text)
            self.assertIn('File "testing/fsdp/parity.py", line 5', text)

    def test_script_runs_standalone(self):
        out = tempfile.mkdtemp()
        proc = subprocess.run(
            [
                sys.executable,
                os.path.join(TOOL, "report.py"),
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
