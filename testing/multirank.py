"""Multi-rank tests: every test method runs on every rank of a process group.

Example::

    from testing import multirank

    class AllReduceTest(multirank.MultiRankTestCase):
        world_size = 2  # the default; per test: @multirank.world_size(4)

        def test_sum(self):
            t = torch.full((3,), float(self.rank + 1), device=self.device)
            dist.all_reduce(t)
            self.assertEqual(t.tolist(), [3.0] * 3)

    if __name__ == "__main__":
        multirank.main()

Rank processes are started once per test class and reused by its methods; a
test that fails, crashes or hangs replaces them. The device comes from
``--device`` (Bazel) or ``--device`` in pytest (see conftest.py); an absent
device, or fewer devices than the world size, fails the test with one line.
"""

import atexit
import json
import os
import signal
import sys
import unittest
from typing import Callable, Optional

from absl.testing import absltest

from testing import case_params
from testing import options
from testing import rank_pool

# unittest leaves this module's frames out of failure tracebacks: the rank
# tracebacks in the message are what matters, not how they were collected.
__unittest = True


def world_size(size: int) -> Callable:
    """Decorator: run this test method with ``size`` ranks."""
    def decorate(method):
        method.multirank_world_size = size
        return method
    return decorate


def timeout(seconds: float) -> Callable:
    """Decorator: fail this test as hung after ``seconds`` on its ranks."""
    def decorate(method):
        method.multirank_timeout_s = seconds
        return method
    return decorate


class MultiRankTestCase(absltest.TestCase):
    """An absltest.TestCase whose test methods run on every rank.

    Inside a test method: ``self.rank``, ``self.world_size``, ``self.device``
    (a torch.device, one per rank on accelerators), ``self.device_kind`` and
    ``self.backend``; the default process group is initialized. ``setUp`` and
    ``tearDown`` run on the ranks too.

    Class attributes:
      world_size: ranks for this class's tests (None: ``--world_size``, or 2).
      timeout_s: per-test timeout (None: ``--rank_timeout``, or the default).
    """

    world_size: Optional[int] = None
    timeout_s: Optional[float] = None
    _pool: Optional[rank_pool.RankPool] = None
    _rank_context: Optional[rank_pool.RankContext] = None

    # ---- what test methods use on a rank --------------------------------

    def bind_rank(self, context: rank_pool.RankContext) -> None:
        """Called on a rank before the test: binds rank, world size, device."""
        self._rank_context = context
        self.rank = context.rank
        self.world_size = context.world_size
        self.device = context.device
        self.device_kind = context.device_kind
        self.backend = context.device_kind.backend

    # ---- what the controller does ---------------------------------------

    @classmethod
    def tearDownClass(cls):
        cls._close_pool()
        super().tearDownClass()

    @classmethod
    def _close_pool(cls) -> None:
        if cls._pool is not None:
            cls._pool.close()
            cls._pool = None

    def _callSetUp(self):
        # setUp runs on the ranks (rank_pool._run_method), not in the runner.
        pass

    def _callTearDown(self):
        pass

    def _callTestMethod(self, method):
        del method  # runs on the ranks
        case_params.record(self, _output_dir())
        self._run_on_ranks()

    def _setting(self, name: str):
        method = getattr(type(self), self._testMethodName)
        return getattr(method, name, None)

    def _planned_world_size(self) -> int:
        return (self._setting("multirank_world_size") or type(self).world_size
                or options.world_size())

    def _planned_timeout(self) -> float:
        return (self._setting("multirank_timeout_s") or type(self).timeout_s
                or options.rank_timeout())

    def _run_on_ranks(self) -> None:
        size = self._planned_world_size()
        kind = options.device()
        missing = kind.missing_reason(size)
        if missing:
            if options.skip_missing_device():
                raise unittest.SkipTest(missing + " (skipped: --missing_device=skip)")
            raise self.failureException(missing)
        pool = self._ensure_pool(size, kind)
        results = pool.run(self.id(), self._testMethodName, self._planned_timeout())
        failed = [r for r in results if r.status not in ("ok", "skip")]
        if failed:
            type(self)._close_pool()
            raise self.failureException(self._failure_message(failed, pool))
        if all(r.status == "skip" for r in results):
            raise unittest.SkipTest(results[0].detail)

    def _ensure_pool(self, size: int, kind) -> rank_pool.RankPool:
        cls = type(self)
        pool = cls._pool
        if pool is not None and (pool.world_size != size or pool.broken):
            cls._close_pool()
            pool = None
        if pool is None:
            pool = rank_pool.RankPool(
                cls, size, kind, options.start_method(),
                log_dir=os.path.join(_output_dir(), "rank_logs", cls.__name__))
            try:
                pool.start()
            except rank_pool.PoolStartError as e:
                raise self.failureException(str(e)) from None
            _write_environment(pool.info)
            cls._pool = pool
        return pool

    def _failure_message(self, failed, pool: rank_pool.RankPool) -> str:
        kind = pool.device_kind
        header = (f"{self._testMethodName} failed on {len(failed)} of "
                  f"{pool.world_size} ranks ({kind.name}/{kind.backend}):")
        logs = f"Per-rank logs: {pool.log_dir}/rank*.log"
        # A rank that died is usually the cause of its peers' errors: first.
        order = {"died": 0, "error": 1, "hung": 2}
        failed = sorted(failed, key=lambda r: (order.get(r.status, 3), r.rank))
        return "\n".join([header, rank_pool.format_results(failed), logs])


def _output_dir() -> str:
    """Where rank logs and environment.json go: Bazel's undeclared outputs."""
    path = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR")
    if not path:
        path = os.environ.get("FSDP_TEST_OUTPUT_DIR") or os.path.join(
            os.environ.get("TEST_TMPDIR", "/tmp"), f"fsdp-test-outputs-{os.getuid()}")
    os.makedirs(path, exist_ok=True)
    return path


def _write_environment(info: dict) -> None:
    with open(os.path.join(_output_dir(), "environment.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)


def _on_sigterm(signum, frame):
    """Bazel's timeout or an interrupted run: dump rank stacks, end the ranks."""
    del frame
    for pool in list(rank_pool._LIVE_POOLS):  # pylint: disable=protected-access
        pool.dump_stacks(list(range(pool.world_size)))
    rank_pool.kill_all_pools()
    sys.stderr.write(f"multirank: terminated by signal {signum}; rank stacks are "
                     f"in {_output_dir()}/rank_logs\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def install_process_guards() -> None:
    """Ends the ranks on SIGTERM and at exit; used by main() and conftest.py."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(rank_pool.kill_all_pools)


def main() -> None:
    """Runs the tests of ``__main__`` with absltest, following Bazel's protocol.

    Besides what absltest already does (sharding, XML, --test_filter), it
    touches TEST_PREMATURE_EXIT_FILE while running so that a test binary that
    exits early is reported by Bazel, and ends the ranks on SIGTERM.
    """
    premature_exit_file = os.environ.get("TEST_PREMATURE_EXIT_FILE")
    if premature_exit_file:
        open(premature_exit_file, "w").close()
    install_process_guards()
    try:
        absltest.main()
    finally:
        if premature_exit_file and os.path.exists(premature_exit_file):
            os.remove(premature_exit_file)
