"""A pool of rank processes that run test methods of one test class.

The controller (the test runner's process) starts ``world_size`` rank processes
once, each joins one process group, and then every test method is sent to all
ranks over a pipe. A test that fails, crashes or hangs breaks the pool; the
caller replaces it, so the next test gets fresh ranks.
"""

import ctypes
import dataclasses
import datetime
import faulthandler
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import tempfile
import time
import traceback
import unittest
import weakref
from typing import Dict, List, Optional

from testing import devices

# How long the other ranks may still run after one rank failed or died, before
# they are reported as stuck (typically waiting in a collective for the dead one).
FAILURE_GRACE_S = 3.0
START_TIMEOUT_S = 120.0
_STACK_DUMP_SIGNAL = signal.SIGUSR1
_LIVE_POOLS = weakref.WeakSet()


@dataclasses.dataclass
class RankResult:
    """What one rank reported for one test."""

    rank: int
    status: str  # ok | skip | error | died | hung
    detail: object = ""  # a message; rank 0's facts dict on a good start


@dataclasses.dataclass
class RankContext:
    """What a test method sees of its rank."""

    rank: int
    world_size: int
    device_kind: devices.DeviceKind
    device: object  # torch.device


class PoolStartError(Exception):
    """The rank processes could not be started or could not form a group."""


class RankPool:
    """``world_size`` rank processes that run methods of ``test_class``."""

    def __init__(self, test_class, world_size: int,
                 device_kind: devices.DeviceKind, start_method: str,
                 log_dir: str):
        self.test_class = test_class
        self.world_size = world_size
        self.device_kind = device_kind
        self.log_dir = log_dir
        self.broken = False
        self.info: Dict[str, object] = {}
        self._context = multiprocessing.get_context(start_method)
        self._processes: List[multiprocessing.Process] = []
        self._conns = []
        self.log_paths = [os.path.join(log_dir, f"rank{r}.log")
                          for r in range(world_size)]
        self._logs_start = [0] * world_size  # log offsets where the current test began
        os.makedirs(log_dir, exist_ok=True)
        self._store_dir = tempfile.mkdtemp(
            prefix="rendezvous-", dir=os.environ.get("TEST_TMPDIR"))
        _LIVE_POOLS.add(self)

    def start(self) -> None:
        """Starts the ranks and waits until each has joined the process group."""
        if self._context.get_start_method() == "fork":
            _refuse_fork_after_accelerator_init(self.device_kind)
        store_path = os.path.join(self._store_dir, "store")
        for rank in range(self.world_size):
            parent_conn, child_conn = self._context.Pipe()
            process = self._context.Process(
                target=_rank_main, name=f"rank{rank}", daemon=True,
                args=(self.test_class, rank, self.world_size,
                      self.device_kind.name, store_path, child_conn,
                      self.log_paths[rank]))
            process.start()
            child_conn.close()
            self._processes.append(process)
            self._conns.append(parent_conn)
        results = self._collect("start", START_TIMEOUT_S)
        failed = [r for r in results if r.status != "ok"]
        if failed:
            self.kill()
            raise PoolStartError(
                f"could not start {self.world_size} ranks on "
                f"{self.device_kind.name}/{self.device_kind.backend}:\n"
                + format_results(failed))
        self.info = results[0].detail  # rank 0's _describe()

    def run(self, test_id: str, method_name: str,
            timeout_s: float) -> List[RankResult]:
        """Runs one test method on every rank; returns each rank's result."""
        self._logs_start = [_file_size(p) for p in self.log_paths]
        for conn in self._conns:
            conn.send(("run", method_name, test_id))
        results = self._collect(test_id, timeout_s)
        if any(r.status not in ("ok", "skip") for r in results):
            self.broken = True
        return results

    def _collect(self, what: str, timeout_s: float) -> List[RankResult]:
        """Waits for one reply per rank, noticing deaths and hangs."""
        results: Dict[int, RankResult] = {}
        deadline = time.monotonic() + timeout_s
        grace_end = None
        while len(results) < self.world_size:
            pending = [r for r in range(self.world_size) if r not in results]
            end = deadline if grace_end is None else min(deadline, grace_end)
            waitables = {}
            for r in pending:
                waitables[self._conns[r]] = r
                waitables[self._processes[r].sentinel] = r
            ready = multiprocessing.connection.wait(
                list(waitables), timeout=max(0.0, end - time.monotonic()))
            if not ready:
                break
            for obj in ready:
                rank = waitables[obj]
                if rank in results:
                    continue
                result = self._receive(rank)
                if result is None:
                    continue
                results[rank] = result
                if result.status not in ("ok", "skip") and grace_end is None:
                    grace_end = time.monotonic() + FAILURE_GRACE_S
        stuck = [r for r in range(self.world_size) if r not in results]
        if stuck:
            self.broken = True
            stacks = self.dump_stacks(stuck)
            if grace_end is not None and time.monotonic() < deadline:
                why = (f"still running {FAILURE_GRACE_S:.0f} s after another "
                       "rank failed (likely waiting in a collective for it)")
            else:
                why = f"{what} did not finish within {timeout_s:.1f} s"
            for r in stuck:
                results[r] = RankResult(r, "hung", f"{why}; its Python stack:\n"
                                        + stacks.get(r, "(no stack dumped)"))
        return [results[r] for r in range(self.world_size)]

    def _receive(self, rank: int) -> Optional[RankResult]:
        """Reads rank's reply, or reports its death; None if nothing yet."""
        conn, process = self._conns[rank], self._processes[rank]
        try:
            if conn.poll():
                status, detail = conn.recv()
                return RankResult(rank, status, detail)
        except (EOFError, OSError):
            pass
        if process.is_alive():
            process.join(0.2)  # the pipe closed: the process is on its way out
        if process.exitcode is None:
            return None
        return RankResult(rank, "died", describe_exit(process.exitcode)
                          + "; end of its log:\n"
                          + self.log_tail(rank))

    def dump_stacks(self, ranks: List[int]) -> Dict[int, str]:
        """Asks ``ranks`` to write their Python stacks; returns them by rank."""
        before = {r: _file_size(self.log_paths[r]) for r in ranks}
        for r in ranks:
            if self._processes[r].is_alive():
                os.kill(self._processes[r].pid, _STACK_DUMP_SIGNAL)
        time.sleep(0.5)
        return {r: trim_stack(_read_from(self.log_paths[r], before[r])).strip()
                for r in ranks}

    def log_tail(self, rank: int, lines: int = 30) -> str:
        """Returns the last ``lines`` this rank logged during the current test."""
        text = trim_stack(_read_from(self.log_paths[rank], self._logs_start[rank]))
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty)"

    def close(self) -> None:
        """Ends the ranks: cleanly if the pool is healthy, by SIGKILL otherwise."""
        if not self.broken:
            for conn in self._conns:
                try:
                    conn.send(("exit", None, None))
                except (BrokenPipeError, OSError):
                    pass
            for process in self._processes:
                process.join(10)
        self.kill()

    def kill(self) -> None:
        """Kills every rank that is still alive and waits for it."""
        for process in self._processes:
            if process.is_alive():
                process.kill()
        for process in self._processes:
            process.join(5)
        for conn in self._conns:
            conn.close()
        self._processes, self._conns = [], []
        _LIVE_POOLS.discard(self)


def kill_all_pools() -> None:
    """Kills the ranks of every live pool (used on SIGTERM and at exit)."""
    for pool in list(_LIVE_POOLS):
        pool.kill()


def format_results(results: List[RankResult]) -> str:
    """Formats the failing ranks' results, one block per rank."""
    blocks = []
    for r in results:
        blocks.append(f"--- rank {r.rank}: {r.status} ---\n{str(r.detail).rstrip()}")
    return "\n".join(blocks)


def describe_exit(exitcode: int) -> str:
    """Describes a process exit code, naming the signal for negative codes."""
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by signal {name} (exit code {exitcode})"
    return f"exited with code {exitcode} before reporting a result"


def trim_stack(text: str) -> str:
    """Drops the frames below a rank's entry point from faulthandler dumps.

    Forked ranks inherit the runner's stack (unittest, absltest, the fork
    itself); only the frames from ``_rank_main`` up say what the rank did.
    """
    kept, skipping = [], False
    for line in text.splitlines():
        if skipping and line.startswith("  File "):
            continue
        skipping = False
        kept.append(line)
        if line.startswith("  File ") and line.endswith(" in _rank_main"):
            skipping = True
    return "\n".join(kept)


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _refuse_fork_after_accelerator_init(kind: devices.DeviceKind) -> None:
    """Forked ranks cannot use an accelerator the parent already initialized."""
    if not kind.is_accelerator:
        return
    module = kind.torch_module()
    initialized = getattr(module, "is_initialized", lambda: False)()
    if initialized:
        raise PoolStartError(
            f"{kind.name} was initialized in the test runner before the ranks "
            "were forked; use --start_method=forkserver or keep the runner "
            "free of device work")


# ----------------------------------------------------------------------------
# Everything below runs in the rank processes.

def _die_with_parent() -> None:
    """Asks the kernel to SIGKILL this process when the controller exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _redirect_output(log_path: str):
    """Sends this process's stdout and stderr to its rank log."""
    log = open(log_path, "ab", buffering=0)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    return log


def _rank_main(test_class, rank, world_size, device_name, store_path, conn,
               log_path) -> None:
    """Entry point of a rank process: join the group, then serve test runs."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    log = _redirect_output(log_path)
    faulthandler.enable(file=log, all_threads=True)
    faulthandler.register(_STACK_DUMP_SIGNAL, file=log, all_threads=True)
    print(f"==== rank {rank} of {world_size} starting (pid {os.getpid()}) ====",
          flush=True)
    try:
        context = _join_group(rank, world_size, device_name, store_path)
    except BaseException:  # pylint: disable=broad-except
        conn.send(("error", traceback.format_exc()))
        os._exit(1)
    conn.send(("ok", _describe(context)))
    while True:
        try:
            command, method_name, test_id = conn.recv()
        except EOFError:
            break
        if command == "exit":
            break
        print(f"==== {test_id} ====", flush=True)
        conn.send(_run_method(test_class, method_name, context))
    _leave_group()


def _join_group(rank, world_size, device_name, store_path) -> RankContext:
    import torch  # pylint: disable=g-import-not-at-top
    import torch.distributed as dist  # pylint: disable=g-import-not-at-top
    kind = devices.get(device_name)
    if kind.is_accelerator:
        kind.torch_module().set_device(rank)
        device = torch.device(kind.name, rank)
    else:
        device = torch.device("cpu")
        # Ranks share the machine's cores: one intra-op pool per core each
        # would oversubscribe them several times over.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group(
        kind.backend, store=store, rank=rank, world_size=world_size,
        timeout=datetime.timedelta(minutes=10))
    return RankContext(rank, world_size, kind, device)


def _describe(context: RankContext) -> dict:
    """Facts about the run that the report shows (rank 0's view)."""
    import torch  # pylint: disable=g-import-not-at-top
    info = {"torch_version": torch.__version__, "device": context.device_kind.name,
            "backend": context.device_kind.backend,
            "world_size": context.world_size,
            "python": sys.version.split()[0]}
    # What the host passed in (tools/bazel lists the names in FSDP_PASSED_ENV; the
    # visibility variables and tools/device_lease's claim are always shown).
    names = set(filter(None, os.environ.get("FSDP_PASSED_ENV", "").split(",")))
    names |= {"CUDA_VISIBLE_DEVICES", "HABANA_VISIBLE_MODULES", "ZE_AFFINITY_MASK",
              "FSDP_DEVICE_LEASE"}
    info["passed_env"] = {
        n: "<redacted>" if re.search("KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", n)
        else os.environ[n] for n in sorted(names) if n in os.environ}
    if context.device_kind.is_accelerator:
        module = context.device_kind.torch_module()
        info["device_count"] = module.device_count()
        info["device_names"] = [module.get_device_name(i)
                                for i in range(module.device_count())]
        # Tells physical devices apart across runs (indices are per visibility list).
        info["device_uuids"] = [str(getattr(module.get_device_properties(i), "uuid", ""))
                                for i in range(module.device_count())]
    else:
        info["device_count"] = os.cpu_count()
        info["device_names"] = ["cpu"]
    return info


def _run_method(test_class, method_name, context: RankContext):
    """Runs setUp, the test method and tearDown; returns (status, detail)."""
    try:
        test = test_class(method_name)
        test.bind_rank(context)
        test.setUp()
        try:
            getattr(test, method_name)()
        finally:
            test.tearDown()
            test.doCleanups()
    except unittest.SkipTest as e:
        return ("skip", str(e))
    except BaseException as e:  # pylint: disable=broad-except
        # Leave out this function's own frame: the test's frames are the story.
        tb = e.__traceback__.tb_next or e.__traceback__
        return ("error", "".join(traceback.format_exception(type(e), e, tb)))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return ("ok", "")


def _leave_group() -> None:
    """Destroys the group and exits without running interpreter teardown.

    torch 2.13's CPU build sometimes aborts in interpreter teardown after FSDP2
    ran; ``os._exit`` keeps that from turning a passed test into a crash.
    """
    import torch.distributed as dist  # pylint: disable=g-import-not-at-top
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
