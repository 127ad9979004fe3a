"""Benchmark: per-test overhead of the multi-rank harness versus spawn-per-test.

Runs N trivial 2-rank tests (an all-reduce whose sum is checked) three ways
and prints a table:

  * this harness (testing/multirank.py), for each start method: ranks started
    once, then reused by every test;
  * a spawn-per-test baseline written for this benchmark: every test starts
    fresh rank processes, as torch's own distributed test harness does.

Usage: tools/bazel run //tools:bench_harness -- --tests=20
   or: PYTHONPATH=. python3 tools/bench_harness.py --tests=20 [--device=cuda]
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
_TESTS = flags.DEFINE_integer("tests", 20, "Trivial tests per approach.", lower_bound=1,
                              upper_bound=MAX_TESTS - 1)
_BASELINE_TESTS = flags.DEFINE_integer(
    "baseline_tests", 5, "Tests for the (slow) spawn-per-test baseline.", lower_bound=1)
_METHODS = flags.DEFINE_list("start_methods", ["fork", "forkserver", "spawn"],
                             "Harness start methods to measure.")
WORLD_SIZE = 2


def _check_all_reduce(rank: int, world_size: int, device="cpu") -> None:
    t = torch.full((8,), float(rank + 1), device=device)
    dist.all_reduce(t)
    expected = world_size * (world_size + 1) / 2
    if t.tolist() != [expected] * 8:
        raise AssertionError(f"all_reduce gave {t.tolist()}")


class TrivialTest(multirank.MultiRankTestCase):
    """Holds the generated trivial tests (test_0000 ...)."""

    world_size = WORLD_SIZE


# Made at import, so ranks started by forkserver or spawn (which import this
# module afresh) find them too.
for _i in range(MAX_TESTS):
    setattr(TrivialTest, f"test_{_i:04d}",
            lambda self: _check_all_reduce(self.rank, self.world_size, self.device))


def _bench_harness(start_method: str, count: int):
    """Returns (seconds for the first test incl. pool start, mean s per later test)."""
    os.environ["FSDP_TEST_START_METHOD"] = start_method
    names = sorted(n for n in dir(TrivialTest) if n.startswith("test_"))[:count + 1]
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
        ranks = [context.Process(target=_baseline_rank,
                                 args=(r, WORLD_SIZE, store_path, options.device().name))
                 for r in range(WORLD_SIZE)]
        for p in ranks:
            p.start()
        for p in ranks:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"baseline rank exited with {p.exitcode}")
    return (time.perf_counter() - started) / count


def main(argv):
    del argv
    count = _TESTS.value
    rows = []
    for method in _METHODS.value:
        first, per_test = _bench_harness(method, count)
        rows.append((f"harness, {method}", first, per_test))
    baseline = _bench_spawn_per_test(_BASELINE_TESTS.value)
    rows.append(("spawn per test (baseline)", baseline, baseline))
    kind = options.device()
    print(f"\n{count} trivial {WORLD_SIZE}-rank tests (all_reduce + check), "
          f"{kind.name}/{kind.backend}, torch {torch.__version__}, {os.cpu_count()} cores")
    print(f"| {'approach':<28} | {'first test (s)':>14} | {'per later test (s)':>18} "
          f"| {'vs baseline':>11} |")
    print(f"|{'-' * 30}|{'-' * 16}|{'-' * 20}|{'-' * 13}|")
    for name, first, per_test in rows:
        print(f"| {name:<28} | {first:>14.3f} | {per_test:>18.4f} "
              f"| {baseline / per_test:>10.0f}x |")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
