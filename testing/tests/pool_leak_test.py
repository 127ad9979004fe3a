"""Self-test: a test that leaks process state on pooled ranks fails, and the next is clean.

Runs pool_leak_cases.py under pytest, the way the suite runs (one session-wide
pool of 2 CPU ranks for every class), and reads the JUnit XML and the pids each
test recorded:

* A1 destroys a subgroup with ``dist.destroy_process_group`` after using it for
  FSDP2. Its own checks pass; the harness fails it as a leak, and A2, which makes
  a mesh on the same ranks (with torch 2.13 that failed in ``full_tensor`` with
  "Could not resolve the process group registered under the name 1" on reused
  ranks), passes on fresh ranks.
* B1 does the same through ``dist_helpers.new_group``: it passes and retires its
  ranks; B2 passes on fresh ones.
* C1 leaves a group, an environment variable and a default dtype: it fails naming
  each; C2 sees none of them.
* D1 keeps a group under ``dist_helpers.pool_owned()``: it passes, and D2 runs on
  the same ranks.
* E1 leaves a group to torch (``dist_helpers.torch_made_groups``): it passes and
  retires its ranks; E2 runs on fresh ones.
* F1 writes a variable torch writes for itself (inductor's kernel loader): it
  passes, and F2 runs on the same ranks, which still have it (torch writes some
  such variables once per process).
"""

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

from absl.testing import absltest

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
_CASES = os.path.join(_HERE, "pool_leak_cases.py")


def _run_cases(*args):
    """Runs the cases under pytest; returns (output, {class: outcome, message}, pids)."""
    state = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
    xml_path = os.path.join(state, "results.xml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSDP_TEST_", "TEST_"))}
    env.update(
        PYTHONPATH=_ROOT,
        CASES_STATE_DIR=state,
        FSDP_TEST_OUTPUT_DIR=os.path.join(state, "out"),
        TEST_TMPDIR=state,
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["--rootdir", _ROOT, "-c", os.path.join(_ROOT, "pytest.ini")]
    command += [f"--junitxml={xml_path}", "--device=cpu", "--world-size=2", _CASES, *args]
    proc = subprocess.run(command, env=env, cwd=_ROOT, capture_output=True, text=True, timeout=240)
    outcomes = {}
    if os.path.exists(xml_path):
        for case in ElementTree.parse(xml_path).iter("testcase"):
            failure = case.find("failure")
            if failure is None:
                failure = case.find("error")
            cls = case.get("classname").rsplit(".", 1)[-1]
            outcomes[cls] = ("passed", "") if failure is None else ("failed", failure.text or "")
    pids = {}
    if os.path.exists(os.path.join(state, "pids")):
        with open(os.path.join(state, "pids")) as f:
            for line in f:
                test_id, rank, pid = line.split()
                cls = test_id.split(".")[-2]
                pids.setdefault(cls, {})[int(rank)] = pid
    return proc.stdout + proc.stderr, outcomes, pids


class PoolLeakTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.output, cls.outcomes, cls.pids = _run_cases()

    def assert_outcome(self, cls, outcome):
        self.assertIn(cls, self.outcomes, self.output)
        self.assertEqual(self.outcomes[cls][0], outcome, f"{cls}:\n{self.outcomes[cls][1]}")

    def assert_pair_passed(self, first, second, *, same_ranks):
        """Both classes passed; ``second`` ran on ``first``'s ranks exactly if ``same_ranks``."""
        self.assert_outcome(first, "passed")
        self.assert_outcome(second, "passed")
        check = self.assertEqual if same_ranks else self.assertNotEqual
        check(self.pids[first], self.pids[second])

    def test_group_destroyed_directly_fails_the_test_and_next_test_passes(self):
        self.assert_outcome("A1DestroysGroupBehindHarness", "failed")
        message = self.outcomes["A1DestroysGroupBehindHarness"][1]
        self.assertIn("rank 0: leaked", message)
        self.assertIn("process group '1' destroyed outside dist_helpers.destroy_group", message)
        self.assert_outcome("A2MeshOnSameRanks", "passed")
        self.assertNotEqual(
            self.pids["A1DestroysGroupBehindHarness"], self.pids["A2MeshOnSameRanks"]
        )

    def test_group_destroyed_through_helper_passes_and_retires_the_ranks(self):
        self.assert_pair_passed(
            "B1DestroysGroupThroughHelper", "B2MeshOnSameRanksAgain", same_ranks=False
        )

    def test_leaked_group_variable_and_dtype_are_named(self):
        self.assert_outcome("C1LeavesGroupAndVariable", "failed")
        message = self.outcomes["C1LeavesGroupAndVariable"][1]
        self.assertRegex(message, r"process group '\d+' \(ranks \[0, 1\]\) is still registered")
        self.assertIn("environment variable POOL_LEAK_CASES_VARIABLE was set to '1'", message)
        self.assertIn("default dtype is torch.float64 (was torch.float32)", message)
        self.assert_outcome("C2SeesCleanState", "passed")
        self.assertNotEqual(self.pids["C1LeavesGroupAndVariable"], self.pids["C2SeesCleanState"])

    def test_group_torch_keeps_retires_the_ranks(self):
        self.assert_pair_passed("E1GroupsLeftToTorch", "E2AfterTorchGroups", same_ranks=False)

    def test_variable_torch_writes_is_not_a_leak(self):
        self.assert_pair_passed("F1TorchWritesEnviron", "F2AfterTorchEnviron", same_ranks=True)

    def test_pool_owned_group_keeps_the_ranks(self):
        self.assert_pair_passed("D1KeepsPoolOwnedGroup", "D2SharesThePool", same_ranks=True)


class OrderOptionTest(absltest.TestCase):
    def test_reverse_runs_the_last_class_first(self):
        output, outcomes, pids = _run_cases("-k", "D1 or D2", "--order=reverse")
        self.assertEqual(
            {c: o for c, (o, _) in outcomes.items()},
            {"D1KeepsPoolOwnedGroup": "passed", "D2SharesThePool": "passed"},
            output,
        )
        self.assertEqual(list(pids), ["D2SharesThePool", "D1KeepsPoolOwnedGroup"])

    def test_bad_order_is_one_usage_error(self):
        output, outcomes, _ = _run_cases("--order=sideways")
        self.assertEqual(outcomes, {})
        self.assertIn("--order must be reverse or random:SEED, not 'sideways'", output)


if __name__ == "__main__":
    absltest.main()
