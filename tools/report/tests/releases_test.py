"""Self-tests of the report's torch release dimension (tools/report/releases.py).

Two hand-written testlogs trees of the same target, one per torch release, as
tools/matrix copies them: ``fsdp/precision/unfreeze_test_cpu`` with records of
the harness's release-range format. On torch 2.13.0+cpu the FSDP2 case is a known
bug that reproduced (an expected failure, written as a pass by absl); on
2.14.1+cu130 it is outside the bug's range and passed; the FSDP1 case carries a
made-up bug whose range covers 2.14.1 but passed there (did not reproduce).
"""

import json
import os
import shutil
import tempfile

from absl.testing import absltest

from tools.report import matrix_summary
from tools.report.tests import fixtures

_XML = """<?xml version="1.0"?>
<testsuites><testsuite name="UnfreezeTest" tests="2">
<testcase name="test_unfrozen_unit_keeps_reduce_dtype_fsdp1" time="1.5"
  classname="__main__.UnfreezeTest"/>
<testcase name="test_unfrozen_unit_keeps_reduce_dtype_fsdp2" time="2.5"
  classname="__main__.UnfreezeTest"/>
</testsuite></testsuites>
"""
_BUG = {
    "issue": "pytorch#186998",
    "summary": "FSDP2 resolves a unit's reduce dtype at its first forward",
    "affected": ">=2.10,<2.14.1",
    "fixed_by": "pytorch#187376",
    "conditions": "",
}
_MADE_UP = {
    "issue": "example/repo#7",
    "summary": "made up",
    "affected": ">=2.14",
    "fixed_by": "",
    "conditions": "world size >=2",
}
_MESSAGE = "grad dtype bf16 vs float32"
_OUTSIDE = "torch 2.14.1 is outside >=2.10,<2.14.1"


def _testlogs(root, version, fsdp2, fsdp1):
    """A testlogs tree of one unfreeze_test_cpu run on torch ``version``."""
    cls = "__main__.UnfreezeTest"
    method = "test_unfrozen_unit_keeps_reduce_dtype"
    where = dict(file="fsdp/precision/unfreeze_test.py")
    target = fixtures.bazel_target(
        root,
        os.path.join("precision", "unfreeze_test_cpu"),
        _XML,
        fixtures.case_record(cls, method + "_fsdp1", method, "fsdp1", known_bug=fsdp1, **where),
        fixtures.case_record(cls, method + "_fsdp2", method, "fsdp2", known_bug=fsdp2, **where),
    )
    env = {"torch_version": version, "device": "cpu", "backend": "gloo", "world_size": 2}
    fixtures.write_file(os.path.join(target, "test.outputs", "environment.json"), json.dumps(env))
    return root


def _ran(bug, version, outcome, expected, **extra):
    """``bug``'s record after a run on torch ``version`` (testing/known_failures.py)."""
    release = version.split("+")[0]
    return dict(
        bug, outcome=outcome, expected=expected, torch=release, torch_version=version, **extra
    )


class ReleaseColumnsTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp()
        old = _testlogs(
            os.path.join(cls.tmp, "2.13", "testlogs"),
            "2.13.0+cpu",
            _ran(_BUG, "2.13.0+cpu", "failed as expected", "yes", message=_MESSAGE),
            None,
        )
        new = _testlogs(
            os.path.join(cls.tmp, "2.14", "testlogs"),
            "2.14.1+cu130",
            _ran(_BUG, "2.14.1+cu130", "passed", "no", not_expected_because=_OUTSIDE),
            _ran(_MADE_UP, "2.14.1+cu130", "passed", "yes"),
        )
        cls.rc, cls.out, cls.html, cls.md = fixtures.run_cli("--testlogs", old, "--testlogs", new)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)
        super().tearDownClass()

    def test_one_column_per_release(self):
        self.assertEqual(self.rc, 0, self.out)
        self.assertIn("cpu \u00b7 torch 2.13.0+cpu", self.html)
        self.assertIn("cpu \u00b7 torch 2.14.1+cu130", self.html)
        cells = fixtures.html_cells(self.html, fixtures.UNFREEZE)
        self.assertLen(cells, 4)  # (2.13, 2.14.1) x (fsdp1, fsdp2)

    def _cell(self, index, status):
        """The UNFREEZE row's cell ``index``, checked to have ``status``."""
        cell = fixtures.html_cells(self.html, fixtures.UNFREEZE)[index]
        self.assertEqual(fixtures.cell_status(cell), status)
        return cell

    def test_known_bug_cell_names_the_releases_it_affects(self):
        cell = self._cell(1, "st-known-bug")  # 2.13 fsdp2
        self.assertIn("torch &gt;=2.10,&lt;2.14.1", cell)
        row = fixtures.md_row(self.md, fixtures.UNFREEZE)
        self.assertIn("pytorch#186998 (torch &gt;=2.10,&lt;2.14.1)", row[1])

    def test_fixed_release_passes_with_a_note(self):
        self.assertIn(
            "pytorch#186998 did not occur on torch 2.14.1+cu130 (torch 2.14.1 is outside "
            "&gt;=2.10,&lt;2.14.1)",
            self._cell(3, "st-pass"),  # 2.14.1 fsdp2
        )

    def test_bug_that_applies_but_did_not_reproduce_fails(self):
        self._cell(2, "st-fail")  # 2.14.1 fsdp1
        self.assertIn(
            "passed on torch 2.14.1+cu130, where example/repo#7 applies (affects torch "
            "&gt;=2.14; shows with world size &gt;=2)",
            self.html,
        )

    def test_per_release_table(self):
        self.assertIn("| 2.13.0+cpu | 1 | 0 | 1 | 0 | 4 s |", self.md)
        self.assertIn("| 2.14.1+cu130 | 1 | 1 | 0 | 0 | 4 s |", self.md)
        self.assertIn("torch 2.13.0+cpu: 1 passed, 0 failed, 1 expected failures", self.out)

    def _summary_row(self, name, seconds, summary_line):
        """matrix_summary's row for run ``name`` over the 2.13 testlogs, with Bazel's
        ``summary_line`` as its log and ``seconds`` of ``bazel test``."""
        folder = os.path.join(self.tmp, name)
        if not os.path.isdir(os.path.join(folder, "testlogs")):
            shutil.copytree(
                os.path.join(self.tmp, "2.13", "testlogs"), os.path.join(folder, "testlogs")
            )
        fixtures.write_file(
            os.path.join(folder, "times.tsv"), "2.13\t2.13.0+cpu\t0\t1\t%d\n" % seconds
        )
        fixtures.write_file(os.path.join(folder, "bazel.log"), summary_line + "\n")
        return matrix_summary.row(self.tmp, name)

    def test_matrix_summary_row(self):
        self.assertEqual(
            self._summary_row("2.13", 95, "//fsdp/precision:unfreeze_test_cpu   PASSED in 9.1s"),
            "| 2.13 | 2.13.0+cpu | 1 passed, 0 failed | 1 | 0 | 1 | 1 s | 95 s | green |",
        )

    def test_matrix_summary_counts_only_this_runs_targets(self):
        # A later run of other targets (say --config=large) in the same output base: the
        # copied testlogs still hold unfreeze_test_cpu's results, which are not this run's.
        self.assertEqual(
            self._summary_row(
                "2.13-large", 30, "//fsdp/precision:other_test_cpu_ws8   PASSED in 9.1s"
            ),
            "| 2.13-large | 2.13.0+cpu | 1 passed, 0 failed | 0 | 0 | 0 | 1 s | 30 s | green |",
        )


if __name__ == "__main__":
    absltest.main()
