"""The rank side of a pool: what runs inside each rank process.

:func:`rank_main` joins the process group, then serves :class:`RunRequest`s
from the controller (testing/rank_pool.py) until told to exit: it resolves the
test class by module and qualified name, runs ``setUp``, the method and
``tearDown``, and answers ``(status, detail)``. A pool may serve several test
classes (session-wide pools under pytest); between two classes the rank ends
the first class (``tearDownClassOnRanks``), restores the process state it had
after joining the group, and starts the next (``setUpClassOnRanks``). After
each test it checks that the test left process-wide state as it found it
(testing/rank_state.py): a test that leaked state fails, and one that destroyed
a process group retires the ranks, so the next test gets fresh ones.
"""

import ctypes
import datetime
import faulthandler
import importlib
import os
import re
import signal
import sys
import traceback
import unittest
from typing import Optional, Tuple

from testing import devices
from testing import rank_protocol
from testing import rank_state
from testing.rank_protocol import RankContext, RunRequest

_output_redirected = False  # sys.stdout/stderr already write to fds 1 and 2


def _die_with_parent() -> None:
    """Asks the kernel to SIGKILL this process when the controller exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _redirect_output(log_path: str) -> None:
    """Sends this process's stdout and stderr (fds 1 and 2) to ``log_path``.

    faulthandler writes to fd 2, so stack dumps follow the output to the new log.
    """
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    global _output_redirected
    if not _output_redirected:
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        _output_redirected = True


def rank_main(rank, world_size, device_name, store_path, conn, log_dir) -> None:
    """Entry point of a rank process: join the group, then serve test runs."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    current_log = rank_protocol.log_path(log_dir, rank)
    _redirect_output(current_log)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(rank_protocol.STACK_DUMP_SIGNAL, file=sys.stderr, all_threads=True)
    print(f"==== rank {rank} of {world_size} starting (pid {os.getpid()}) ====", flush=True)
    try:
        context = _join_group(rank, world_size, device_name, store_path)
        rank_state.watch_group_destruction()
        baseline = class_state = rank_state.Snapshot(context)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        os._exit(1)
    conn.send(("ok", _describe(context)))
    current_class = None
    while True:
        try:
            request = conn.recv()
        except EOFError:
            break
        if request == rank_protocol.EXIT:
            break
        path = rank_protocol.log_path(request.log_dir, rank)
        if path != current_log:
            _redirect_output(path)
            current_log = path
            print(
                f"==== rank {rank} of {world_size} (pid {os.getpid()}) continues here ====",
                flush=True,
            )
        print(f"==== {request.test_id} ====", flush=True)
        test_class, problem = _resolve(request)
        if problem is None and test_class is not current_class:
            if current_class is not None:
                _end_class(current_class)
                baseline.restore()
            current_class = None
            problem = _begin_class(test_class)
            if problem is None:
                current_class = test_class
                class_state = rank_state.Snapshot(context)
        if problem is not None:
            conn.send(("error", problem))
            continue
        conn.send(_run_checked(test_class, request.method, context, class_state))
    if current_class is not None:
        _end_class(current_class)
    _leave_group()


def _join_group(rank, world_size, device_name, store_path) -> RankContext:
    import torch
    import torch.distributed as dist

    from testing.fsdp import rank_device

    kind = devices.get(device_name)
    if kind.is_accelerator:
        # Rank r takes the r-th *visible* device, so an allocation made through
        # CUDA_VISIBLE_DEVICES (or a vendor's equivalent) is respected.
        kind.torch_module().set_device(rank)
        device = torch.device(kind.name, rank)
    else:
        device = torch.device("cpu")
        # Ranks share the machine's cores: one intra-op pool per core each
        # would oversubscribe them several times over.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    # The default of every testing/fsdp helper that takes a device.
    rank_device.record(device)
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group(
        kind.backend,
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(minutes=10),
    )
    return RankContext(rank, world_size, kind, device)


def _describe(context: RankContext) -> dict:
    """Facts about the run that the report shows (rank 0's view)."""
    import torch

    info = {
        "torch_version": torch.__version__,
        "device": context.device_kind.name,
        "backend": context.device_kind.backend,
        "world_size": context.world_size,
        "python": sys.version.split()[0],
    }
    # What the host passed in (tools/bazel lists the names in FSDP_PASSED_ENV; the
    # visibility variables and tools/device_lease's claim are always shown).
    names = set(filter(None, os.environ.get("FSDP_PASSED_ENV", "").split(",")))
    names |= {k.visible_devices_env for k in devices.DEVICES.values()} | {"FSDP_DEVICE_LEASE"}
    info["passed_env"] = {
        n: "<redacted>" if re.search("KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", n) else os.environ[n]
        for n in sorted(names)
        if n and n in os.environ
    }
    if context.device_kind.is_accelerator:
        module = context.device_kind.torch_module()
        info["device_count"] = module.device_count()
        info["device_names"] = [module.get_device_name(i) for i in range(module.device_count())]
        # Tells physical devices apart across runs (indices are per visibility list).
        info["device_uuids"] = [
            str(getattr(module.get_device_properties(i), "uuid", ""))
            for i in range(module.device_count())
        ]
    else:
        info["device_count"] = os.cpu_count()
        info["device_names"] = ["cpu"]
    return info


def _resolve(request: RunRequest) -> Tuple[Optional[type], Optional[str]]:
    """Finds the test class named by ``request``; (class, None) or (None, why not)."""
    what = f"{request.module}.{request.qualname}"
    if "<locals>" in request.qualname:
        return None, (
            f"cannot run {what}.{request.method} on the ranks: the class is "
            "defined inside a function; define test classes at module level"
        )
    try:
        module = sys.modules.get(request.module) or importlib.import_module(request.module)
    except Exception:
        return None, (
            f"cannot run {what}.{request.method}: the rank process could not "
            f"import module {request.module!r}:\n{traceback.format_exc()}"
        )
    obj = module
    for part in request.qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None, (
                f"cannot run {what}.{request.method}: module {request.module!r} "
                f"in the rank process has no class {request.qualname!r}"
            )
    return obj, None


def _begin_class(test_class) -> Optional[str]:
    """Runs the class's rank-side set-up; returns an error message if it raised."""
    try:
        test_class.setUpClassOnRanks()
    except BaseException:
        return (
            f"{test_class.__name__}.setUpClassOnRanks failed on this rank:\n"
            + traceback.format_exc()
        )
    return None


def _end_class(test_class) -> None:
    """Runs the class's rank-side tear-down; a failure is only logged (no test to fail)."""
    try:
        test_class.tearDownClassOnRanks()
    except BaseException:
        print(
            f"{test_class.__name__}.tearDownClassOnRanks failed:\n" + traceback.format_exc(),
            flush=True,
        )


def _run_checked(test_class, method_name, context: RankContext, class_state):
    """Runs one test from the class's state; fails it if it left process state changed."""
    class_state.restore_rng()
    rank_state.begin_test()
    status, detail = _run_method(test_class, method_name, context)
    if status != "ok":
        return status, detail
    leaks = class_state.leaks()
    if leaks:
        return (
            "leaked",
            "the test passed, but left process-wide state changed, which later tests on "
            "these ranks would inherit (the ranks are replaced):\n"
            + "\n".join("  - " + leak for leak in leaks),
        )
    retire = rank_state.retire_reasons()
    if retire:
        return ("ok", {rank_protocol.RETIRE: "; ".join(retire)})
    return ("ok", "")


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
    except BaseException as e:
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
    import torch.distributed as dist

    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
