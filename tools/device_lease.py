#!/usr/bin/env python3
"""Runs a test on devices nobody else holds: `--run_under` wrapper of `--config=cuda|hpu|xpu`.

    device_lease.py TEST_BINARY --device=cuda --world_size=2 [ARGS...]

Several accelerator tests run at once on one host (`.bazelrc` raises
`--local_test_jobs`); without this wrapper every one of them would use devices
0..ws-1. The wrapper

  1. reads the device kind and world size from the test's own arguments
     (`--device=`, `--world_size=`, set by the `fsdp_test` macro), so BUILD stays
     the one source; a CPU test, or one without those arguments, runs unchanged;
  2. takes the candidate devices from the kind's visibility variable when the host
     already set it (`CUDA_VISIBLE_DEVICES=4,5`: only those two), else 0..count-1,
     count being `FSDP_DEVICE_COUNT` (tools/bazel passes what it counted), else what
     the vendor's tool lists (the device table's `list_command`, which starts no
     runtime); with no count at all, the test runs unchanged and the harness reports
     the device;
  3. claims `world_size` of them with `flock` on one file per device in
     `${FSDP_DEVICE_LOCK_DIR:-/tmp/fsdp-device-locks}`, waiting while too few are
     free (one waiter at a time claims, so a 4-device test is not starved by
     2-device ones);
  4. exports the visibility variable (the device table's `visible_devices_env`)
     naming only the claimed devices and execs the
     test. The lock descriptors stay open across exec and in the ranks the test
     forks, so the devices stay claimed until the last of those processes exits; a
     crashed test frees them with no clean-up.

The harness then maps rank r to the r-th visible device. When the candidates are
fewer than the world size, nothing is claimed and the test runs as is, so its own
"N devices visible; world size W needs W" failure is what the user sees.
Standard library only: it runs under the system python3, before the test's
interpreter.
"""

import fcntl
import os
import random
import re
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

ME = "device_lease"


def _device_table():
    """tools/device_table.py, the table's loader, imported from beside this file.

    Under Bazel the wrapper and its data (device_table.py, testing/devices.py) are in the
    test's runfiles, so the loader is beside the path it was started by, locally and on
    a remote worker; run by hand, it is beside the file's real path, in the checkout.
    """
    here = os.path.abspath(__file__)
    for tools in (os.path.dirname(here), os.path.dirname(os.path.realpath(here))):
        if os.path.exists(os.path.join(tools, "device_table.py")):
            if tools not in sys.path:
                sys.path.append(tools)  # append: tools/ holds packages named report, remote
            import device_table

            return device_table
    raise LeaseError(f"no device_table.py beside {here} or {os.path.realpath(here)}")


def visibility_env() -> Dict[str, str]:
    """{device: visibility variable} of the accelerators in the device table."""
    return {
        k.name: k.visible_devices_env
        for k in _device_table().load().DEVICES.values()
        if k.accelerator and k.visible_devices_env
    }


DEFAULT_LOCK_DIR = "/tmp/fsdp-device-locks"
POLL_SECONDS = 0.5


class LeaseError(Exception):
    """The wrapper cannot decide which devices to use."""


def parse_test_args(argv: Sequence[str]) -> Tuple[Optional[str], Optional[int]]:
    """Returns (device, world_size) from `--device=X --world_size=N`; the last one wins.

    pytest's spelling, `--world-size`, counts too (conftest.py).
    """
    device, world_size = None, None
    it = iter(argv)
    for arg in it:
        for flag in ("--device", "--world_size", "--world-size"):
            value = None
            if arg.startswith(flag + "="):
                value = arg[len(flag) + 1 :]
            elif arg == flag:
                value = next(it, None)
            if value is None:
                continue
            if flag == "--device":
                device = value
            elif value.isdigit():
                world_size = int(value)
            else:
                raise LeaseError(f"--world_size={value} is not a positive integer")
    return device, world_size


def detect_count(kind: str) -> int:
    """Devices of `kind` on this host: FSDP_DEVICE_COUNT, else the vendor tool's list
    (the device table's `list_command`)."""
    override = os.environ.get("FSDP_DEVICE_COUNT")
    if override:
        if not override.isdigit():
            raise LeaseError(f"FSDP_DEVICE_COUNT={override} is not a count")
        return int(override)
    table = _device_table()
    try:
        return table.listed_count(kind)
    except table.TableError as e:
        raise LeaseError(str(e)) from None


def candidates(kind: str, variable: str, env: Dict[str, str]) -> List[str]:
    """The devices this test may use: the host's allocation (`variable`) if it made one,
    else all."""
    allocated = env.get(variable, "").strip()
    if allocated:
        return [entry.strip() for entry in allocated.split(",") if entry.strip()]
    return [str(i) for i in range(detect_count(kind))]


def _lock_path(lock_dir: str, kind: str, entry: str) -> str:
    # Entries can be UUIDs (GPU-..., MIG-...): keep the file name plain.
    return os.path.join(lock_dir, f"{kind}-{re.sub(r'[^A-Za-z0-9_.-]', '_', entry)}.lock")


def _open_lock(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        os.fchmod(fd, 0o666)  # Shared by every user's tests on the host.
    except OSError:
        pass
    return fd


def _try_claim(
    lock_dir: str, kind: str, pool: Sequence[str], needed: int
) -> Optional[List[Tuple[str, int]]]:
    """Locks `needed` free devices of `pool` without waiting; None if too few are free."""
    held: List[Tuple[str, int]] = []
    for entry in pool:
        fd = _open_lock(_lock_path(lock_dir, kind, entry))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        held.append((entry, fd))
        if len(held) == needed:
            return held
    for _, fd in held:
        os.close(fd)
    return None


def claim(
    kind: str, pool: Sequence[str], needed: int, lock_dir: str, log=sys.stderr
) -> List[Tuple[str, int]]:
    """Blocks until `needed` devices of `pool` are locked; returns (entry, fd) pairs.

    Waiters queue on one lock per kind, so the first waiter gets the next free
    devices even when it needs more than those behind it.
    """
    if not os.path.isdir(lock_dir):
        os.makedirs(lock_dir, exist_ok=True)
        try:
            os.chmod(lock_dir, 0o1777)  # Every user's tests on the host share it.
        except OSError:
            pass
    queue = _open_lock(os.path.join(lock_dir, f"{kind}.queue"))
    try:
        fcntl.flock(queue, fcntl.LOCK_EX)
        waited_since = None
        while True:
            held = _try_claim(lock_dir, kind, pool, needed)
            if held is not None:
                if waited_since is not None:
                    log.write(
                        f"{ME}: got {kind} {','.join(e for e, _ in held)} after "
                        f"{time.monotonic() - waited_since:.1f} s\n"
                    )
                return held
            if waited_since is None:
                waited_since = time.monotonic()
                log.write(
                    f"{ME}: waiting for {needed} free {kind} device(s) of "
                    f"{','.join(pool)} (locks in {lock_dir})\n"
                )
                log.flush()
            time.sleep(POLL_SECONDS * (0.5 + random.random()))
    finally:
        os.close(queue)  # Closing releases the queue lock for the next waiter.


def prepare(argv: Sequence[str], env: Dict[str, str]) -> Tuple[Dict[str, str], List[int]]:
    """Claims devices for the test `argv`; returns its environment and the held fds."""
    kind, world_size = parse_test_args(argv[1:])
    if kind is None or kind == "cpu":
        return env, []  # Nothing to share (or not an fsdp_test).
    variable = visibility_env().get(kind)
    if variable is None:
        return env, []  # A device without a visibility variable: nothing to narrow.
    needed = world_size or 1
    try:
        pool = candidates(kind, variable, env)
    except LeaseError as e:
        # No devices to count (a CPU-only host): the harness reports the missing device
        # itself, or skips it with --missing_device=skip.
        sys.stderr.write(
            f"{ME}: cannot count {kind} devices ({e}); running without a "
            f"claim (set FSDP_DEVICE_COUNT or {variable})\n"
        )
        return env, []
    if len(pool) < needed:
        return env, []  # The harness fails with its own "devices visible" message.
    lock_dir = env.get("FSDP_DEVICE_LOCK_DIR") or DEFAULT_LOCK_DIR
    held = claim(kind, pool, needed, lock_dir)
    env = dict(env)
    env[variable] = ",".join(entry for entry, _ in held)
    env["FSDP_DEVICE_LEASE"] = f"{kind}:{env[variable]}"
    return env, [fd for _, fd in held]


def main(argv: Sequence[str]) -> int:
    """Claims the devices the test after argv[0] needs, then execs it."""
    if len(argv) < 2:
        sys.stderr.write(f"usage: {ME} TEST [ARGS...]\n")
        return 2
    command = list(argv[1:])
    try:
        env, fds = prepare(command, dict(os.environ))
    except LeaseError as e:
        sys.stderr.write(f"{ME}: {e}\n")
        return 2
    for fd in fds:
        os.set_inheritable(fd, True)  # The test and its ranks hold the claim.
    try:
        os.execvpe(command[0], command, env)
    except OSError as e:
        sys.stderr.write(f"{ME}: cannot run {command[0]}: {e}\n")
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
