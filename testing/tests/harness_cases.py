"""Multi-rank tests that pass, fail, crash and hang on purpose.

Run by harness_test.py as a separate program; each class shows one behaviour
of the harness. Not a test target of its own.
"""

import os
import signal
import time

import torch
import torch.distributed as dist

from testing import multirank
from testing.fsdp import parity


def _record_pid(rank):
    """Appends this rank's pid to a file the self-test reads afterwards."""
    with open(os.path.join(os.environ["CASES_STATE_DIR"], f"pids{rank}"), "a") as f:
        f.write(f"{os.getpid()}\n")


class Passing(multirank.MultiRankTestCase):
    """All-reduces of rank-distinct values, checked on every rank."""

    def test_all_reduce_sums_ranks(self):
        t = torch.full((4,), float(self.rank + 1), device=self.device)
        dist.all_reduce(t)
        expected = self.world_size * (self.world_size + 1) / 2
        self.assertEqual(t.tolist(), [expected] * 4)

    def test_records_pid_a(self):
        _record_pid(self.rank)

    def test_records_pid_b(self):
        _record_pid(self.rank)

    def test_same_across_ranks(self):
        parity.assert_same_across_ranks(torch.ones(3, device=self.device))


class ChecksAWorldOfThree(multirank.MultiRankTestCase):
    """Holds at world size 3 only; harness_test declares so in FSDP_TEST_APPLICABILITY."""

    def test_world_size_three(self):
        self.assertEqual(dist.get_world_size(), 3)


class SetsWorldSizeAttribute(multirank.MultiRankTestCase):
    """The old way of pinning a size, which no longer applies silently."""

    world_size = 4

    def test_never_runs(self):
        pass


class OneRankRaises(multirank.MultiRankTestCase):
    def test_rank1_raises(self):
        _record_pid(self.rank)
        if self.rank == 1:
            raise ValueError("boom on rank one")


class TwoRanksFailDifferently(multirank.MultiRankTestCase):
    def test_both_fail(self):
        if self.rank == 0:
            self.assertEqual(1, 2, "rank zero's assertion")
        raise KeyError("rank one's key")


class CrashBySignal(multirank.MultiRankTestCase):
    def test_segfault(self):
        if self.rank == 1:
            os.kill(os.getpid(), signal.SIGSEGV)
        dist.barrier()


class ExitsEarly(multirank.MultiRankTestCase):
    def test_os_exit(self):
        if self.rank == 0:
            os._exit(7)
        dist.barrier()


class WaitsForTermination(multirank.MultiRankTestCase):
    """Sleeps on every rank until Bazel (here: the self-test) sends SIGTERM."""

    @multirank.timeout(600)
    def test_sleeps_until_terminated(self):
        _record_pid(self.rank)
        time.sleep(3600)


class Hangs(multirank.MultiRankTestCase):
    @multirank.timeout(3)
    def test_sleeps_forever(self):
        if self.rank == 1:
            time.sleep(3600)


class RecoversAfterFailure(multirank.MultiRankTestCase):
    """The first test kills a rank; the second must get a fresh pool."""

    def test_a_kills_rank(self):
        if self.rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)

    def test_b_runs_on_fresh_ranks(self):
        t = torch.ones(1, device=self.device)
        dist.all_reduce(t)
        self.assertEqual(t.item(), self.world_size)


class DifferentAcrossRanks(multirank.MultiRankTestCase):
    def test_tensor_differs(self):
        t = torch.zeros(2, 3, device=self.device)
        if self.rank == 1:
            t[1, 2] = 0.5
        parity.assert_same_across_ranks(t, name="weights")


class Sharded(multirank.MultiRankTestCase):
    """Six cheap tests for the sharding split."""

    def test_s0(self):
        dist.barrier()

    def test_s1(self):
        dist.barrier()

    def test_s2(self):
        dist.barrier()

    def test_s3(self):
        dist.barrier()

    def test_s4(self):
        dist.barrier()

    def test_s5(self):
        dist.barrier()


class SetsProcessState(multirank.MultiRankTestCase):
    """Changes process-wide state on the ranks, in its rank-side class set-up."""

    @classmethod
    def setUpClassOnRanks(cls):
        os.environ["HARNESS_CASES_LEAK"] = "1"
        torch.set_default_dtype(torch.float64)

    def test_state_is_set(self):
        _record_pid(self.rank)
        self.assertEqual(os.environ.get("HARNESS_CASES_LEAK"), "1")
        self.assertEqual(torch.get_default_dtype(), torch.float64)


class SeesCleanState(multirank.MultiRankTestCase):
    """Run after SetsProcessState on the same ranks: none of its state is left."""

    def test_state_is_clean(self):
        _record_pid(self.rank)
        self.assertNotIn("HARNESS_CASES_LEAK", os.environ)
        self.assertEqual(torch.get_default_dtype(), torch.float32)


class AlsoRecordsPid(multirank.MultiRankTestCase):
    """A second class that records its ranks' pids, to see whether they were reused."""

    def test_records_pid_c(self):
        _record_pid(self.rank)


if __name__ == "__main__":
    multirank.main()
