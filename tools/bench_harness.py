"""Benchmark: overhead of the multi-rank harness.

Two sections, each a table (``--sections`` picks them):

``start_methods``: N trivial 2-rank tests (an all-reduce whose sum is
checked), run

  * by this harness (testing/multirank.py), for each start method: ranks
    started once, then reused by every test;
  * by a spawn-per-test baseline written for this benchmark: every test starts
    fresh rank processes, as torch's own distributed test harness does.

``pools``: C test classes of M trivial tests each, run as unittest runs them
(setUpClass/tearDownClass at class boundaries), once with a pool of ranks per
class (what Bazel targets do) and once with one session-wide pool (what the
pytest path does), side by side: the first test of each class shows what a
class pays to start.

Usage: tools/bazel run //tools:bench_harness -- --tests=20
   or: PYTHONPATH=. python3 tools/bench_harness.py --sections=pools --classes=10 \
         --tests_per_class=5 [--device=cuda]
"""

import multiprocessing
import os
import sys
import tempfile
import time
import unittest

from absl import app
from absl import flags

import torch
import torch.distributed as dist

from testing import devices
from testing import multirank
from testing import options

MAX_TESTS = 500
_TESTS = flags.DEFINE_integer(
    "tests", 20, "Trivial tests per approach.", lower_bound=1, upper_bound=MAX_TESTS - 1
)
_BASELINE_TESTS = flags.DEFINE_integer(
    "baseline_tests", 5, "Tests for the (slow) spawn-per-test baseline.", lower_bound=1
)
_METHODS = flags.DEFINE_list(
    "start_methods", ["fork", "forkserver", "spawn"], "Harness start methods to measure."
)
_SECTIONS = flags.DEFINE_list(
    "sections", ["start_methods", "pools"], "Tables to print: start_methods, pools."
)
MAX_CLASSES = 50
MAX_TESTS_PER_CLASS = 50
_CLASSES = flags.DEFINE_integer(
    "classes", 10, "Test classes for the pools table.", lower_bound=2, upper_bound=MAX_CLASSES - 1
)
_TESTS_PER_CLASS = flags.DEFINE_integer(
    "tests_per_class",
    5,
    "Tests per class for the pools table.",
    lower_bound=1,
    upper_bound=MAX_TESTS_PER_CLASS,
)


def _check_all_reduce(rank: int, world_size: int, device="cpu") -> None:
    t = torch.full((8,), float(rank + 1), device=device)
    dist.all_reduce(t)
    expected = world_size * (world_size + 1) / 2
    if t.tolist() != [expected] * 8:
        raise AssertionError(f"all_reduce gave {t.tolist()}")


_WORKLOAD = flags.DEFINE_enum(
    "workload",
    "all_reduce",
    ["all_reduce", "fsdp"],
    "What each test of the pools table does: an all-reduce whose sum is checked, or "
    "one FSDP2 training step of a small MLP checked against an unsharded reference "
    "(shows the first-use costs a fresh rank process pays for FSDP).",
)


def _trivial_test(self):
    _check_all_reduce(self.rank, self.world_size, self.device)


def _pool_test(self):
    # From the environment: ranks started by forkserver or spawn have no parsed flags.
    if os.environ.get("BENCH_HARNESS_WORKLOAD") == "fsdp":
        from testing.fsdp import models, training

        training.check_against_reference(
            models.get("nested_mlp"), "fsdp2", steps=1, device=self.device
        )
        return
    _check_all_reduce(self.rank, self.world_size, self.device)


class TrivialTest(multirank.MultiRankTestCase):
    """Holds the generated trivial tests (test_0000 ...)."""


# Made at import, so ranks started by forkserver or spawn (which import this
# module afresh) find them too.
for _i in range(MAX_TESTS):
    setattr(TrivialTest, f"test_{_i:04d}", _trivial_test)

# Classes of the pools table: PoolClass00 ... with test_00 ... each, defined at
# module level so that the ranks can look them up by name.
POOL_CLASSES = []
for _c in range(MAX_CLASSES):
    _cls = type(
        f"PoolClass{_c:02d}",
        (multirank.MultiRankTestCase,),
        {f"test_{_t:02d}": _pool_test for _t in range(MAX_TESTS_PER_CLASS)},
    )
    _cls.__module__ = __name__
    globals()[_cls.__name__] = _cls
    POOL_CLASSES.append(_cls)


def _bench_harness(start_method: str, count: int):
    """Returns (seconds for the first test incl. pool start, mean s per later test)."""
    os.environ["FSDP_TEST_START_METHOD"] = start_method
    os.environ["FSDP_TEST_POOL_SCOPE"] = "class"
    names = sorted(n for n in dir(TrivialTest) if n.startswith("test_"))[: count + 1]
    times = []
    for name in names:
        result = unittest.TestResult()
        started = time.perf_counter()
        TrivialTest(name).run(result)
        times.append(time.perf_counter() - started)
        if not result.wasSuccessful():
            raise RuntimeError(f"{start_method}: {result.failures or result.errors}")
    TrivialTest.tearDownClass()
    later = times[1:]
    return times[0], sum(later) / len(later)


def _baseline_rank(rank: int, world_size: int, store_path: str, device_name: str) -> None:
    kind = devices.get(device_name)
    device = torch.device("cpu")
    if kind.is_accelerator:
        kind.torch_module().set_device(rank)
        device = torch.device(kind.name, rank)
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group(kind.backend, store=store, rank=rank, world_size=world_size)
    _check_all_reduce(rank, world_size, device)
    dist.destroy_process_group()


def _bench_spawn_per_test(count: int) -> float:
    """Returns mean seconds per test when every test spawns fresh ranks."""
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    for _ in range(count):
        store_path = os.path.join(tempfile.mkdtemp(), "store")
        ranks = [
            context.Process(
                target=_baseline_rank,
                args=(r, options.world_size(), store_path, options.device().name),
            )
            for r in range(options.world_size())
        ]
        for p in ranks:
            p.start()
        for p in ranks:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"baseline rank exited with {p.exitcode}")
    return (time.perf_counter() - started) / count


class _TimingResult(unittest.TestResult):
    """A TestResult that records each test's class and seconds."""

    def __init__(self):
        super().__init__()
        self.timings = []
        self._started = 0.0

    def startTest(self, test):
        super().startTest(test)
        self._started = time.perf_counter()

    def stopTest(self, test):
        self.timings.append((type(test), time.perf_counter() - self._started))
        super().stopTest(test)


def _bench_pools(scope: str, n_classes: int, per_class: int):
    """Runs n_classes x per_class trivial tests with ``scope`` pools.

    Returns (first test of the first class, mean first test of the other
    classes, mean of every other test, total seconds including closing the pools).
    """
    os.environ["FSDP_TEST_POOL_SCOPE"] = scope
    os.environ["FSDP_TEST_START_METHOD"] = "fork"
    suite = unittest.TestSuite(
        cls(f"test_{t:02d}") for cls in POOL_CLASSES[:n_classes] for t in range(per_class)
    )
    result = _TimingResult()
    started = time.perf_counter()
    suite.run(result)
    multirank.close_session_pools()
    total = time.perf_counter() - started
    if not result.wasSuccessful():
        raise RuntimeError(f"{scope} pools: {result.failures or result.errors}")
    firsts, others, seen = [], [], set()
    for cls, seconds in result.timings:
        (others if cls in seen else firsts).append(seconds)
        seen.add(cls)
    later_firsts = firsts[1:]

    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    return firsts[0], mean(later_firsts), mean(others), total


def _print_pools_table() -> None:
    n_classes, per_class = _CLASSES.value, _TESTS_PER_CLASS.value
    _bench_pools("class", 1, 1)  # warm-up: page cache, lazy imports; not reported
    rows = [
        (f"{scope}", *_bench_pools(scope, n_classes, per_class)) for scope in ("class", "session")
    ]
    kind = options.device()
    per_class_total = rows[0][-1]
    print(
        f"\n{n_classes} classes x {per_class} {_WORKLOAD.value} tests at world size "
        f"{options.world_size()}, "
        f"{kind.name}/{kind.backend}, fork, torch {torch.__version__}, "
        f"{os.cpu_count()} cores"
    )
    print(
        f"| {'pool per':<8} | {'1st class, 1st test (s)':>23} | "
        f"{'later classes, 1st test (s)':>27} | {'other tests (s)':>15} | "
        f"{'total (s)':>9} | {'vs class':>8} |"
    )
    print(f"|{'-' * 10}|{'-' * 25}|{'-' * 29}|{'-' * 17}|{'-' * 11}|{'-' * 10}|")
    for scope, first, later_first, other, total in rows:
        print(
            f"| {scope:<8} | {first:>23.3f} | {later_first:>27.3f} | {other:>15.4f} | "
            f"{total:>9.2f} | {per_class_total / total:>7.1f}x |"
        )
    sys.stdout.flush()


def main(argv):
    """Prints the benchmark tables chosen by --sections."""
    del argv
    os.environ["BENCH_HARNESS_WORKLOAD"] = _WORKLOAD.value
    if "pools" in _SECTIONS.value:
        _print_pools_table()
    if "start_methods" in _SECTIONS.value:
        _print_start_methods_table()


def _print_start_methods_table() -> None:
    count = _TESTS.value
    rows = []
    for method in _METHODS.value:
        first, per_test = _bench_harness(method, count)
        rows.append((f"harness, {method}", first, per_test))
    baseline = _bench_spawn_per_test(_BASELINE_TESTS.value)
    rows.append(("spawn per test (baseline)", baseline, baseline))
    kind = options.device()
    print(
        f"\n{count} trivial {options.world_size()}-rank tests (all_reduce + check), "
        f"{kind.name}/{kind.backend}, torch {torch.__version__}, {os.cpu_count()} cores"
    )
    print(
        f"| {'approach':<28} | {'first test (s)':>14} | {'per later test (s)':>18} "
        f"| {'vs baseline':>11} |"
    )
    print(f"|{'-' * 30}|{'-' * 16}|{'-' * 20}|{'-' * 13}|")
    for name, first, per_test in rows:
        print(
            f"| {name:<28} | {first:>14.3f} | {per_test:>18.4f} | {baseline / per_test:>10.0f}x |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
