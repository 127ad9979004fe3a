"""Multi-rank tests: every test method runs on every rank of a process group.

Example::

    from testing import multirank

    class BroadcastTest(multirank.MultiRankTestCase):

        def test_rank0_value_reaches_every_rank(self):
            t = torch.full((3,), float(self.rank + 7), device=self.device)
            dist.broadcast(t, src=0)
            self.assertEqual(t.tolist(), [7.0] * 3)

    if __name__ == "__main__":
        multirank.main()

The world size is the target's (``--world_size``, set by the BUILD macro's
``world_sizes``; under pytest, each declared size in turn). Where a test
applies is declared in its BUILD ``fsdp_test`` (``valid_world_sizes``,
``cases``, ``disabled``; see testing/applicability.py): a case outside its
declaration is reported as not run, with the reason.

Rank processes are started once per test class (or once per pytest session,
see ``--pool_scope``) and reused; a test that fails, crashes or hangs replaces
them. The device comes from ``--device``; an absent device, or fewer devices
than the world size, fails the test with one line.
"""

import atexit
import inspect
import json
import os
import signal
import sys
import unittest
from typing import Callable, Dict, Optional

from absl.testing import absltest

from testing import applicability
from testing import case_params
from testing import known_failures as known_failures_lib
from testing import not_run as not_run_lib
from testing import options
from testing import rank_pool
from testing import session_pools
from testing.rank_protocol import RankContext

# The start of a skip reason that means "this case does not apply here": the report
# and pytest's summary show such a case as not run, apart from skips.
NOT_RUN_PREFIX = not_run_lib.PREFIX

# unittest leaves this module's frames out of failure tracebacks: the rank
# tracebacks in the message are what matters, not how they were collected.
__unittest = True


def timeout(seconds: float) -> Callable:
    """Decorator: fail this test as hung after ``seconds`` on its ranks.

    With absl's ``parameterized``, put it below the ``@parameterized...`` line:
    the generated cases copy the attributes of the function they wrap, and a
    bound set on the parameterized object above it would be lost silently.
    """

    def decorate(method):
        if not inspect.isfunction(method):
            raise TypeError(
                f"@multirank.timeout needs the test function itself, not {type(method).__name__}: "
                "put it below @parameterized.named_parameters/parameters"
            )
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
      timeout_s: per-test timeout (None: ``--rank_timeout``, or the default).
      known_failures: ``{method name: known_failures.TorchBug}`` for the cases a
        known torch bug makes fail, with the releases and conditions it needs
        (see testing/known_failures.py).

    Class hooks ``setUpClassOnRanks``/``tearDownClassOnRanks`` run on every
    rank before the class's first test there and after its last; unittest's
    ``setUpClass``/``tearDownClass`` run in the runner, which has no process
    group and must not touch an accelerator.
    """

    timeout_s: Optional[float] = None
    known_failures: Dict[str, known_failures_lib.TorchBug] = {}
    # Set on a rank by bind_rank; a class-level value is a mistake (see _check_world_size).
    world_size: Optional[int] = None
    _pool: Optional[rank_pool.RankPool] = None
    _rank_context: Optional[RankContext] = None

    # ---- what test methods use on a rank --------------------------------

    @classmethod
    def setUpClassOnRanks(cls) -> None:
        """Runs on every rank before this class's first test on those ranks."""

    @classmethod
    def tearDownClassOnRanks(cls) -> None:
        """Runs on every rank after this class's last test on those ranks."""

    def bind_rank(self, context: RankContext) -> None:
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
        """Ends the class's own rank pool (a session-wide pool is left running)."""
        # A session-wide pool outlives the class; close_session_pools() ends it.
        pool = cls.__dict__.get("_pool")
        if pool is not None:
            session_pools.discard(pool)
        super().tearDownClass()

    def _callSetUp(self):
        # setUp runs on the ranks (rank_server._run_method), not in the runner.
        pass

    def _callTearDown(self):
        pass

    def run(self, result=None):
        """Runs the test, as an expected failure where its known torch bug applies here."""
        # unittest reads this before the test runs: a case whose known torch bug
        # must reproduce here is an expected failure, and passing is unexpected.
        bug = type(self).known_failures.get(self._testMethodName)
        if bug is not None and known_failures_lib.expected_here(
            bug, options.known_failures(), self._known_failure_case()
        ):
            self.__unittest_expecting_failure__ = True
        return super().run(result)

    def _known_failure_case(self) -> known_failures_lib.Case:
        """What a known bug's conditions are matched against: where this case runs."""
        kind = options.device()
        return known_failures_lib.Case(
            world_size=options.world_size(),
            device=kind.name,
            backend=kind.backend,
            params=case_params.parameters(self),
        )

    def _callTestMethod(self, method):
        del method  # runs on the ranks
        case = self._known_failure_case()
        record = case_params.describe(
            type(self), self._testMethodName, device=case.device, world_size=case.world_size
        )
        case_params.record(record, output_dir())
        # A misspelt entry would never apply, and its bug would fail as if unknown.
        unknown = sorted(m for m in type(self).known_failures if not hasattr(type(self), m))
        if unknown:
            raise self.failureException(
                f"{type(self).__name__}.known_failures names no test method: {unknown}"
            )
        bug = type(self).known_failures.get(self._testMethodName)
        if bug is None:
            self._run_on_ranks()
            return
        expected = getattr(self, "__unittest_expecting_failure__", False)
        try:
            self._run_on_ranks()
        except self.failureException as e:
            outcome = "failed as expected" if expected else "failed"
            known_failures_lib.record(
                record, bug, outcome, output_dir(), case=case, expected=expected, message=str(e)
            )
            why = ""
            if not expected:
                mismatches = bug.mismatches(case, known_failures_lib.torch_release())
                why = "not expected here: " + ("; ".join(mismatches) or "--known_failures=strict")
            raise self.failureException(
                "\n".join(filter(None, [bug.describe(), why, str(e)]))
            ) from None
        known_failures_lib.record(record, bug, "passed", output_dir(), case=case, expected=expected)
        if expected:
            sys.stderr.write(
                f"{self.id()}: did not fail on torch {known_failures_lib.torch_version()}, "
                f"where this bug applies: {bug.describe()}. Either the test no longer catches "
                "it, or this build has a fix (then update affected)\n"
            )

    def _setting(self, name: str):
        method = getattr(type(self), self._testMethodName)
        return getattr(method, name, None)

    def _planned_timeout(self) -> float:
        return (
            self._setting("multirank_timeout_s") or type(self).timeout_s or options.rank_timeout()
        )

    def _check_world_size(self, size: int) -> None:
        """Fails the test if its class pins a world size (the target gives it)."""
        cls = type(self)
        if cls.world_size is not None:
            raise self.failureException(
                f"{cls.__name__} sets world_size = {cls.world_size} as a class attribute; "
                f"the world size comes from the target (this run: {size}). Remove it, and "
                "declare the sizes in the BUILD fsdp_test: world_sizes, and "
                "valid_world_sizes with the reason if others cannot apply"
            )

    def _not_run_reason(self, device: str, size: int) -> Optional[str]:
        """Why this case does not apply here, from its BUILD declaration, or None."""
        module = sys.modules.get(type(self).__module__)
        test_file = getattr(module, "__file__", None)
        declaration = applicability.for_test_file(test_file) if test_file else None
        if declaration is None:
            return None
        return declaration.not_run_reason(self._testMethodName, device, size)

    def _record_not_run(self, device: str, size: int, reason: str) -> None:
        """Keeps the reason for the report: absl's JUnit XML drops skip reasons."""
        cls = type(self)
        case = not_run_lib.NotRun(
            classname=f"{cls.__module__}.{cls.__qualname__}",
            method=self._testMethodName,
            file=case_params.test_file(cls),
            device=device,
            world_size=size,
            reason=reason,
        )
        not_run_lib.record(cls, case, output_dir())

    def _run_on_ranks(self) -> None:
        size = options.world_size()
        self._check_world_size(size)
        kind = options.device()
        not_run = self._not_run_reason(kind.name, size)
        if not_run:
            self._record_not_run(kind.name, size, not_run)
            raise unittest.SkipTest(f"{NOT_RUN_PREFIX}{not_run}")
        missing = kind.missing_reason(size)
        if missing:
            if options.skip_missing_device():
                raise unittest.SkipTest(missing + " (skipped: --missing_device=skip)")
            raise self.failureException(missing)
        cls = type(self)
        log_dir = os.path.join(output_dir(), "rank_logs", cls.__name__)
        pool = self._ensure_pool(size, kind, log_dir)
        results = pool.run(
            cls, self._testMethodName, self.id(), self._planned_timeout(), log_dir=log_dir
        )
        failed = [r for r in results if r.status not in ("ok", "skip")]
        if failed:
            session_pools.discard(pool)
            raise self.failureException(self._failure_message(failed, pool))
        if all(r.status == "skip" for r in results):
            raise unittest.SkipTest(results[0].detail)

    def _ensure_pool(self, size: int, kind, log_dir: str) -> rank_pool.RankPool:
        """The pool this test runs on: the class's or the session's, started if needed."""
        cls = type(self)
        start_method = options.start_method()
        key = (kind.name, size, start_method)
        held = cls.__dict__.get("_pool")
        pool = session_pools.get(key) if options.pool_scope() == "session" else held
        if pool is not None and (
            pool.world_size != size or pool.broken or pool.retired or not pool.can_run(cls)
        ):
            session_pools.discard(pool)
            pool = None
        if pool is None:
            pool = rank_pool.RankPool(size, kind, start_method, log_dir=log_dir)
            try:
                pool.start()
            except rank_pool.PoolStartError as e:
                raise self.failureException(str(e)) from None
            _write_environment(pool.info)
            if options.pool_scope() == "session":
                session_pools.register(key, pool)
        # The class's pool, also when shared: its tearDownClass then lets go of it.
        if held is not None and held is not pool:
            session_pools.discard(held)
        session_pools.hold(cls, pool)
        return pool

    def _failure_message(self, failed, pool: rank_pool.RankPool) -> str:
        kind = pool.device_kind
        header = (
            f"{self._testMethodName} failed on {len(failed)} of "
            f"{pool.world_size} ranks ({kind.name}/{kind.backend}):"
        )
        logs = f"Per-rank logs: {pool.log_dir}/rank*.log"
        # A rank that died is usually the cause of its peers' errors: first.
        order = {"died": 0, "error": 1, "hung": 2, "leaked": 3}
        failed = sorted(failed, key=lambda r: (order.get(r.status, 3), r.rank))
        return "\n".join([header, rank_pool.format_results(failed), logs])


def output_dir() -> str:
    """Where rank logs, environment.json and the report's records go.

    Bazel's undeclared outputs; under pytest ``FSDP_TEST_OUTPUT_DIR``, else a
    directory under the temporary directory.
    """
    path = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR")
    if not path:
        path = os.environ.get("FSDP_TEST_OUTPUT_DIR") or os.path.join(
            os.environ.get("TEST_TMPDIR", "/tmp"), f"fsdp-test-outputs-{os.getuid()}"
        )
    os.makedirs(path, exist_ok=True)
    return path


def _write_environment(info: dict) -> None:
    with open(os.path.join(output_dir(), "environment.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)


def _on_sigterm(signum, frame):
    """Bazel's timeout or an interrupted run: dump rank stacks, end the ranks."""
    del frame
    for pool in list(rank_pool._LIVE_POOLS):
        pool.dump_stacks(list(range(pool.world_size)))
    rank_pool.kill_all_pools()
    sys.stderr.write(
        f"multirank: terminated by signal {signum}; rank stacks are in {output_dir()}/rank_logs\n"
    )
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
    code = 1
    try:
        absltest.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        if premature_exit_file and os.path.exists(premature_exit_file):
            os.remove(premature_exit_file)
    # absltest has written its XML and shard status by now. Tearing down an
    # interpreter that imported torch takes about 0.6 s per test binary (measured on
    # 2 cores), which the suite pays once per target; nothing left needs it.
    rank_pool.kill_all_pools()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def close_session_pools() -> None:
    """Ends every session-wide pool cleanly (pytest's session end; conftest.py)."""
    session_pools.close_all()
