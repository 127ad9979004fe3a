"""Self-tests of the multi-rank harness.

Each test runs harness_cases.py (tests that pass, fail, crash and hang on
purpose) as a separate program, the way Bazel or pytest would, and asserts on
what the harness reported and that no rank process was left behind.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ElementTree

from absl.testing import absltest

from testing import devices
from testing import rank_protocol
from testing import rank_server

_HERE = os.path.dirname(os.path.abspath(__file__))
_CASES = os.path.join(_HERE, "harness_cases.py")
_ROOT = os.path.dirname(os.path.dirname(_HERE))

# ChecksAWorldOfThree's declaration, as the BUILD macro would pass it.
_THREE_REASON = "valid at world size 3, not 2: the case checks a world of three"
_ONLY_THREE = {
    "FSDP_TEST_APPLICABILITY": json.dumps(
        {"valid_world_sizes": "3: the case checks a world of three"}
    )
}


def _processes_with_marker(marker: str):
    """Returns pids of live processes whose environment holds ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


class CasesRun:
    """One run of harness_cases.py with its output, XML and state directory."""

    def __init__(self, test, args, env=None, pytest=False):
        self.state_dir = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        self.marker = f"HARNESS_SELFTEST_MARK={uuid.uuid4().hex}"
        self.xml_path = os.path.join(self.state_dir, "results.xml")
        self.env = dict(
            os.environ,
            PYTHONPATH=_ROOT,
            CASES_STATE_DIR=self.state_dir,
            TEST_UNDECLARED_OUTPUTS_DIR=os.path.join(self.state_dir, "out"),
            HARNESS_SELFTEST_MARK=self.marker.split("=")[1],
        )
        for name in (
            "TEST_TOTAL_SHARDS",
            "TEST_SHARD_INDEX",
            "TEST_SHARD_STATUS_FILE",
            "TESTBRIDGE_TEST_ONLY",
            "TEST_PREMATURE_EXIT_FILE",
            "FSDP_TEST_DEVICE",
            "FSDP_TEST_MISSING_DEVICE",
            "FSDP_TEST_WORLD_SIZE",
            "FSDP_TEST_POOL_SCOPE",
            "FSDP_TEST_APPLICABILITY",
            "FSDP_TEST_OUTPUT_DIR",
        ):
            self.env.pop(name, None)
        self.env.update(env or {})
        if pytest:
            self.command = [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--rootdir",
                _ROOT,
                "-c",
                os.path.join(_ROOT, "pytest.ini"),
                f"--junitxml={self.xml_path}",
                _CASES,
            ] + args
        else:
            self.command = [sys.executable, _CASES, f"--xml_output_file={self.xml_path}"] + args
        self.test = test

    def start(self) -> subprocess.Popen:
        return subprocess.Popen(
            self.command,
            env=self.env,
            cwd=_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, timeout=120) -> "CasesRun":
        started = time.monotonic()
        process = self.start()
        self.output, _ = process.communicate(timeout=timeout)
        self.returncode = process.returncode
        self.elapsed = time.monotonic() - started
        self.assert_no_leftovers()
        return self

    def assert_no_leftovers(self):
        deadline = time.monotonic() + 5
        while _processes_with_marker(self.marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.test.assertEqual(
            _processes_with_marker(self.marker), [], "rank processes were left behind"
        )

    def testcases(self):
        """Returns {test name: 'passed'|'failed'|'skipped'} from the XML."""
        outcomes = {}
        for case in ElementTree.parse(self.xml_path).iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                outcome = "failed"
            elif case.find("skipped") is not None or case.get("result") == "suppressed":
                outcome = "skipped"
            else:
                outcome = "passed"
            outcomes[case.get("name")] = outcome
        return outcomes


class HarnessTest(absltest.TestCase):
    def cases(self, *args, **kwargs) -> CasesRun:
        return CasesRun(self, list(args), **kwargs).run()

    def pids(self, run: CasesRun, rank: int):
        """The pids rank ``rank`` recorded, in test order."""
        with open(os.path.join(run.state_dir, f"pids{rank}")) as f:
            return f.read().split()

    def each_rank_pids(self, run: CasesRun, count: int):
        """Yields ``(rank, pids)`` for both ranks after checking each recorded ``count`` pids."""
        for rank in (0, 1):
            pids = self.pids(run, rank)
            self.assertLen(pids, count)
            yield rank, pids

    def test_passing_tests_pass_and_reuse_the_ranks(self):
        run = self.cases("Passing")
        self.assertEqual(run.returncode, 0, run.output)
        self.assertIn("Ran 4 tests", run.output)
        self.assertEqual(set(run.testcases().values()), {"passed"})
        for _, pids in self.each_rank_pids(run, 2):
            self.assertEqual(pids[0], pids[1], "ranks were restarted between tests")
        self.assertTrue(os.path.exists(os.path.join(run.state_dir, "out", "environment.json")))

    def test_bazel_path_starts_ranks_per_class(self):
        run = self.cases("Passing", "AlsoRecordsPid")
        self.assertEqual(run.returncode, 0, run.output)
        for _, pids in self.each_rank_pids(run, 3):
            self.assertEqual(pids[0], pids[1])
            self.assertNotEqual(pids[1], pids[2], "a class reused another class's ranks")

    def test_pytest_session_reuses_ranks_across_classes(self):
        run = CasesRun(self, ["-k", "Passing or AlsoRecordsPid"], pytest=True).run()
        self.assertIn("5 passed", run.output)
        for rank, pids in self.each_rank_pids(run, 3):
            self.assertEqual(len(set(pids)), 1, f"rank {rank} was restarted: {pids}")
            for cls in ("Passing", "AlsoRecordsPid"):
                with open(
                    os.path.join(run.state_dir, "out", "rank_logs", cls, f"rank{rank}.log")
                ) as f:
                    self.assertIn(f"{cls}.test_", f.read())

    def test_pytest_session_replaces_ranks_after_a_failure(self):
        run = CasesRun(self, ["-k", "OneRankRaises or AlsoRecordsPid"], pytest=True).run()
        self.assertIn("1 failed, 1 passed", run.output)
        for _, pids in self.each_rank_pids(run, 2):
            self.assertNotEqual(pids[0], pids[1], "ranks of a failed test were reused")

    def test_pytest_session_does_not_leak_class_state(self):
        run = CasesRun(self, ["-k", "SetsProcessState or SeesCleanState"], pytest=True).run()
        self.assertIn("2 passed", run.output)
        self.assertEqual(len(set(self.pids(run, 0))), 1, "the classes did not share ranks")

    def test_declared_exclusion_is_not_run_with_its_reason(self):
        run = self.cases("ChecksAWorldOfThree", env=_ONLY_THREE)
        self.assertEqual(run.returncode, 0, run.output)
        self.assertEqual(run.testcases(), {"test_world_size_three": "skipped"})
        # absl's XML drops skip reasons: the report reads them from the case's record.
        with open(os.path.join(run.state_dir, "out", "cases.json")) as f:
            cases = json.load(f)["cases"]
        self.assertEqual(
            [(c["test_id"], c["world_size"], c["not_run"]) for c in cases],
            [("ChecksAWorldOfThree.test_world_size_three", 2, _THREE_REASON)],
        )

    def test_declared_size_runs(self):
        run = self.cases("ChecksAWorldOfThree", "--world_size=3", env=_ONLY_THREE)
        self.assertEqual(run.returncode, 0, run.output)
        self.assertEqual(run.testcases(), {"test_world_size_three": "passed"})

    def test_pytest_lists_declared_exclusions_apart(self):
        run = CasesRun(self, ["-k", "ChecksAWorldOfThree"], env=_ONLY_THREE, pytest=True).run()
        self.assertEqual(run.returncode, 5, run.output)  # pytest: no tests ran
        self.assertNotRegex(run.output, r"\d+ (passed|failed|skipped)")
        self.assertIn("not run: 1 case\n", run.output)
        self.assertIn(f"testing/tests/harness_cases.py  ws2  1 case  {_THREE_REASON}", run.output)
        with open(os.path.join(run.state_dir, "cases.json")) as f:
            self.assertEqual(json.load(f)["cases"][0]["not_run"], _THREE_REASON)
        run = CasesRun(
            self, ["-k", "ChecksAWorldOfThree", "--world-size=3"], env=_ONLY_THREE, pytest=True
        ).run()
        self.assertIn("1 passed", run.output)
        self.assertNotIn("not run:", run.output)

    def test_class_attribute_world_size_fails_loudly(self):
        run = self.cases("SetsWorldSizeAttribute")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("SetsWorldSizeAttribute sets world_size = 4 as a class attribute", run.output)

    def test_rank_names_a_class_it_cannot_find(self):
        request = rank_protocol.RunRequest(
            "testing.tests.harness_cases", "NoSuchClass", "test_x", "id", "/tmp"
        )
        _, problem = rank_server._resolve(request)
        self.assertEqual(
            problem,
            "cannot run testing.tests.harness_cases.NoSuchClass.test_x: "
            "module 'testing.tests.harness_cases' in the rank process has no "
            "class 'NoSuchClass'",
        )
        request = rank_protocol.RunRequest("no_such_module", "X", "test_x", "id", "/tmp")
        _, problem = rank_server._resolve(request)
        self.assertIn("could not import module 'no_such_module'", problem)

    def test_exception_on_one_rank_names_the_rank_and_traceback(self):
        run = self.cases("OneRankRaises")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("test_rank1_raises failed on 1 of 2 ranks (cpu/gloo)", run.output)
        self.assertIn("--- rank 1: error ---", run.output)
        self.assertIn('raise ValueError("boom on rank one")', run.output)
        self.assertNotIn("--- rank 0", run.output)

    def test_two_ranks_failing_differently_are_both_reported(self):
        run = self.cases("TwoRanksFailDifferently")
        self.assertIn("failed on 2 of 2 ranks", run.output)
        self.assertIn("AssertionError: 1 != 2 : rank zero's assertion", run.output)
        self.assertIn('KeyError: "rank one\'s key"', run.output)

    def test_crash_by_signal_names_rank_and_signal(self):
        run = self.cases("CrashBySignal")
        self.assertIn("--- rank 1: died ---\nkilled by signal SIGSEGV (exit code -11)", run.output)
        self.assertIn("in test_segfault", run.output)
        self.assertLess(run.elapsed, 30)

    def test_os_exit_names_rank_and_exit_code(self):
        run = self.cases("ExitsEarly")
        self.assertIn(
            "--- rank 0: died ---\nexited with code 7 before reporting a result", run.output
        )

    def test_hang_hits_timeout_and_shows_the_stack(self):
        run = self.cases("Hangs")
        self.assertIn("--- rank 1: hung ---", run.output)
        self.assertIn("did not finish within 3.0 s; its Python stack:", run.output)
        self.assertRegex(run.output, r'harness_cases.py", line \d+ in test_sleeps_forever')
        self.assertLess(run.elapsed, 30)

    def test_pool_is_replaced_after_a_failure(self):
        run = self.cases("RecoversAfterFailure")
        self.assertEqual(
            run.testcases(), {"test_a_kills_rank": "failed", "test_b_runs_on_fresh_ranks": "passed"}
        )
        self.assertIn("killed by signal SIGKILL", run.output)

    def test_tensor_mismatch_across_ranks_reads_well(self):
        run = self.cases("DifferentAcrossRanks")
        self.assertIn(
            "rank 1: 1 of 1 tensors differ (float32: rtol=0, atol=0) "
            "[weights vs rank 0]\n"
            "  weights: max abs diff 5.000e-01, max rel diff inf; 1/6 "
            "elements out of tolerance; worst at (1, 2): actual 0.5 vs expected 0",
            run.output,
        )

    def test_absent_device_fails_with_one_line(self):
        run = self.cases("Passing.test_all_reduce_sums_ranks", "--device=hpu")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn(
            "AssertionError: hpu requested: 0 devices visible; world size 2 needs 2", run.output
        )

    def test_absent_device_skips_only_when_asked(self):
        run = self.cases(
            "Passing.test_all_reduce_sums_ranks", "--device=hpu", "--missing_device=skip"
        )
        self.assertEqual(run.returncode, 0, run.output)
        self.assertEqual(run.testcases(), {"test_all_reduce_sums_ranks": "skipped"})

    def test_world_size_above_device_count_message(self):
        kind = devices.get("cuda")
        with absltest.mock.patch.object(devices, "_count", return_value=1):
            self.assertEqual(
                kind.missing_reason(2), "cuda requested: 1 devices visible; world size 2 needs 2"
            )
            self.assertIsNone(kind.missing_reason(1))

    def test_unknown_device_is_one_clear_error(self):
        run = self.cases("Passing", "--device=tpu")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("value should be one of <cpu|cuda|hpu|xpu>", run.output)
        self.assertNotIn("Traceback", run.output)

    def test_sharding_splits_the_methods(self):
        names = []
        for index in (0, 1):
            status = os.path.join(tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")), "status")
            run = self.cases(
                "Sharded",
                env={
                    "TEST_TOTAL_SHARDS": "2",
                    "TEST_SHARD_INDEX": str(index),
                    "TEST_SHARD_STATUS_FILE": status,
                },
            )
            self.assertEqual(run.returncode, 0, run.output)
            self.assertTrue(os.path.exists(status))
            shard = [n for n, o in run.testcases().items() if o == "passed"]
            self.assertLen(shard, 3)
            names += shard
        self.assertCountEqual(names, [f"test_s{i}" for i in range(6)])

    def test_premature_exit_file_is_removed_after_a_normal_exit(self):
        flag = os.path.join(tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")), "exit")
        run = self.cases(
            "Passing.test_all_reduce_sums_ranks", env={"TEST_PREMATURE_EXIT_FILE": flag}
        )
        self.assertEqual(run.returncode, 0, run.output)
        self.assertFalse(os.path.exists(flag))

    def test_sigterm_dumps_rank_stacks_and_ends_the_ranks(self):
        run = CasesRun(self, ["WaitsForTermination"])
        process = run.start()
        pid_file = os.path.join(run.state_dir, "pids1")
        deadline = time.monotonic() + 60
        while not os.path.exists(pid_file) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        self.assertEqual(process.returncode, 128 + signal.SIGTERM, output)
        self.assertIn("multirank: terminated by signal 15", output)
        run.assert_no_leftovers()
        log = os.path.join(run.state_dir, "out", "rank_logs", "WaitsForTermination", "rank1.log")
        with open(log) as f:
            self.assertIn("in test_sleeps_until_terminated", f.read())

    def test_pytest_path_gives_the_same_results(self):
        run = CasesRun(self, ["-k", "Passing or OneRankRaises"], pytest=True).run()
        self.assertIn("1 failed, 4 passed", run.output)
        self.assertIn("--- rank 1: error ---", run.output)

    def test_pytest_path_takes_the_device_option(self):
        run = CasesRun(
            self, ["-k", "test_all_reduce_sums_ranks", "--device=hpu"], pytest=True
        ).run()
        # An absent device is no reason to leave a size out: each default size fails.
        self.assertIn("hpu requested: 0 devices visible; world size 1 needs 1", run.output)
        self.assertIn("hpu requested: 0 devices visible; world size 2 needs 2", run.output)
        self.assertIn("2 failed", run.output)
        self.assertNotIn("not run:", run.output)


if __name__ == "__main__":
    absltest.main()
