"""Run options of the multi-rank harness, from absl flags or the environment.

Bazel targets pass flags (``--device=cuda``); the pytest path sets the same
options through environment variables (see ``conftest.py``), because pytest
does not parse absl flags.
"""

import os
from typing import Optional

from absl import flags

from testing import devices

_DEVICE = flags.DEFINE_enum(
    "device",
    None,
    list(devices.DEVICES),
    "Device the ranks run on (env FSDP_TEST_DEVICE; default cpu).",
)
_WORLD_SIZE = flags.DEFINE_integer(
    "world_size",
    None,
    "World size every test of the run uses; set by the BUILD macro's world_sizes "
    "(env FSDP_TEST_WORLD_SIZE; default 2).",
    lower_bound=1,
)
_MISSING_DEVICE = flags.DEFINE_enum(
    "missing_device",
    None,
    ["fail", "skip"],
    "What a test does when the device or enough of them is absent: fail "
    "(default) or skip (opt-in; env FSDP_TEST_MISSING_DEVICE).",
)
_RANK_TIMEOUT = flags.DEFINE_float(
    "rank_timeout",
    None,
    "Seconds one test may run on its ranks before it is failed as hung and "
    "every rank's stack is shown (env FSDP_TEST_RANK_TIMEOUT).",
    lower_bound=0.1,
)
_START_METHOD = flags.DEFINE_enum(
    "start_method",
    None,
    ["fork", "forkserver", "spawn"],
    "How rank processes are started (env FSDP_TEST_START_METHOD; default fork).",
)
_POOL_SCOPE = flags.DEFINE_enum(
    "pool_scope",
    None,
    ["class", "session"],
    "Which tests share one pool of ranks: each test class its own (default), or "
    "every class of the process with the same device and world size (env "
    "FSDP_TEST_POOL_SCOPE; pytest's default is session).",
)

_KNOWN_FAILURES = flags.DEFINE_enum(
    "known_failures",
    None,
    ["expect", "strict"],
    "Test cases a known torch bug makes fail (a class's known_failures): expect "
    "(default) checks that they still fail on the torch releases the bug was seen "
    "on; strict runs them as ordinary tests, so they fail the target (env "
    "FSDP_TEST_KNOWN_FAILURES). See testing/known_failures.py.",
)

DEFAULT_WORLD_SIZE = 2
DEFAULT_RANK_TIMEOUT_S = 120.0


def _value(holder, env_name: str) -> Optional[str]:
    """Returns a flag's value if it was given, else the environment's, else None."""
    if flags.FLAGS.is_parsed() and holder.present:
        return holder.value
    return os.environ.get(env_name) or None


def device() -> devices.DeviceKind:
    """Returns the requested DeviceKind (default cpu)."""
    return devices.get(_value(_DEVICE, "FSDP_TEST_DEVICE") or "cpu")


def world_size() -> int:
    """Returns the world size of this run: the target's (BUILD world_sizes), else 2."""
    value = _value(_WORLD_SIZE, "FSDP_TEST_WORLD_SIZE")
    return int(value) if value else DEFAULT_WORLD_SIZE


def skip_missing_device() -> bool:
    """True when the user opted in to skipping tests whose device is absent."""
    value = _value(_MISSING_DEVICE, "FSDP_TEST_MISSING_DEVICE") or "fail"
    if value not in ("fail", "skip"):
        raise ValueError(f"missing_device must be fail or skip, not {value!r}")
    return value == "skip"


def rank_timeout() -> float:
    """Returns the default per-test timeout in seconds.

    Stays well inside Bazel's own test timeout (TEST_TIMEOUT) so that the
    harness, not Bazel, reports a hang with every rank's stack.
    """
    value = _value(_RANK_TIMEOUT, "FSDP_TEST_RANK_TIMEOUT")
    if value:
        return float(value)
    bazel_timeout = os.environ.get("TEST_TIMEOUT")
    if bazel_timeout:
        return min(DEFAULT_RANK_TIMEOUT_S, float(bazel_timeout) / 3)
    return DEFAULT_RANK_TIMEOUT_S


def start_method() -> str:
    """Returns the multiprocessing start method for rank processes."""
    return _value(_START_METHOD, "FSDP_TEST_START_METHOD") or "fork"


def pool_scope() -> str:
    """Returns ``class`` (a pool per test class) or ``session`` (one per process)."""
    value = _value(_POOL_SCOPE, "FSDP_TEST_POOL_SCOPE") or "class"
    if value not in ("class", "session"):
        raise ValueError(f"pool_scope must be class or session, not {value!r}")
    return value


def known_failures() -> str:
    """Returns ``expect`` (default) or ``strict``; see testing/known_failures.py."""
    return _value(_KNOWN_FAILURES, "FSDP_TEST_KNOWN_FAILURES") or "expect"
