"""Run options of the multi-rank harness: one table, read as absl flags or the environment.

Each option is defined once, in ``OPTIONS``: its name, environment variable, choices,
default and help. Bazel targets pass the absl flags made from it (``--device=cuda``);
the pytest path (``conftest.py``) makes its options from the same table
(``--world-size``: the flag's name with dashes) and sets the environment variables,
because pytest does not parse absl flags. A flag given wins over the environment.
"""

import dataclasses
import os
from typing import Optional, Tuple

from absl import flags

from testing import devices


@dataclasses.dataclass(frozen=True)
class Option:
    """One run option.

    Attributes:
        name: the absl flag's name (``world_size``); pytest's option is
            ``--world-size``.
        env: the environment variable the pytest path (or a user) sets.
        help: what it does, without the default or the variable (added from the
            fields).
        default: the value when neither flag nor variable gives one (None: computed,
            see the accessor).
        choices: the values allowed, or None for a number.
        number: the type of a numeric option (int or float), None otherwise.
        lower_bound: the smallest value of a numeric option.
        pytest_default: the pytest path's default, where it differs from ``default``.
    """

    name: str
    env: str
    help: str
    default: Optional[str] = None
    choices: Optional[Tuple[str, ...]] = None
    number: Optional[type] = None
    lower_bound: Optional[float] = None
    pytest_default: Optional[str] = None

    @property
    def pytest_flag(self) -> str:
        """The pytest option, ``--world-size`` for ``world_size``."""
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """The help text with the default and the variable, for absl and pytest."""
        defaults = [f"default {self.default}"] if self.default else []
        if self.pytest_default:
            defaults = [f"default {self.default}, under pytest {self.pytest_default}"]
        return f"{self.help} (env {self.env}{''.join('; ' + d for d in defaults)})."


DEFAULT_WORLD_SIZE = 2
DEFAULT_RANK_TIMEOUT_S = 120.0

OPTIONS = (
    Option(
        "device",
        "FSDP_TEST_DEVICE",
        "Device the ranks run on",
        default="cpu",
        choices=tuple(devices.DEVICES),
    ),
    Option(
        "world_size",
        "FSDP_TEST_WORLD_SIZE",
        "World size every test of the run uses; set by the BUILD macro's world_sizes. "
        "Under pytest: run this size only (without it, every size each test's BUILD "
        "declaration gives for the device and the host holds; sizes a test cannot run "
        "at are listed as not run)",
        default=str(DEFAULT_WORLD_SIZE),
        number=int,
        lower_bound=1,
    ),
    Option(
        "missing_device",
        "FSDP_TEST_MISSING_DEVICE",
        "What a test does when the device or enough of them is absent: fail, or skip (opt-in)",
        default="fail",
        choices=("fail", "skip"),
    ),
    Option(
        "rank_timeout",
        "FSDP_TEST_RANK_TIMEOUT",
        "Seconds one test may run on its ranks before it is failed as hung and every "
        f"rank's stack is shown; default {DEFAULT_RANK_TIMEOUT_S:g}, and at most a third "
        "of Bazel's TEST_TIMEOUT",
        number=float,
        lower_bound=0.1,
    ),
    Option(
        "start_method",
        "FSDP_TEST_START_METHOD",
        "How rank processes are started",
        default="fork",
        choices=("fork", "forkserver", "spawn"),
    ),
    Option(
        "pool_scope",
        "FSDP_TEST_POOL_SCOPE",
        "Which tests share one pool of ranks: each test class its own (class), or every "
        "class of the process with the same device and world size (session)",
        default="class",
        choices=("class", "session"),
        pytest_default="session",
    ),
    Option(
        "known_failures",
        "FSDP_TEST_KNOWN_FAILURES",
        "Test cases a known torch bug makes fail (a class's known_failures): expect "
        "checks that they still fail on the torch releases the bug was seen on; strict "
        "runs them as ordinary tests, so they fail the target. See "
        "testing/known_failures.py",
        default="expect",
        choices=("expect", "strict"),
    ),
)
_BY_NAME = {option.name: option for option in OPTIONS}


def _define(option: Option):
    """Defines the absl flag of ``option``; None default, so the environment can fill in."""
    if option.choices:
        return flags.DEFINE_enum(option.name, None, list(option.choices), option.describe())
    define = flags.DEFINE_integer if option.number is int else flags.DEFINE_float
    return define(option.name, None, option.describe(), lower_bound=option.lower_bound)


_FLAGS = {option.name: _define(option) for option in OPTIONS}


def _value(name: str) -> Optional[str]:
    """Returns an option's flag value if given, else its variable's, else its default.

    Raises ValueError naming the choices when the variable holds a value not among them.
    """
    option, holder = _BY_NAME[name], _FLAGS[name]
    if flags.FLAGS.is_parsed() and holder.present:
        return holder.value
    value = os.environ.get(option.env) or None
    if value is not None and option.choices and value not in option.choices:
        raise ValueError(
            f"{option.env}={value}: {option.name} must be one of {', '.join(option.choices)}"
        )
    return option.default if value is None else value


def device() -> devices.DeviceKind:
    """Returns the requested DeviceKind (default cpu)."""
    return devices.get(_value("device"))


def world_size() -> int:
    """Returns the world size of this run: the target's (BUILD world_sizes), else 2."""
    return int(_value("world_size"))


def skip_missing_device() -> bool:
    """True when the user opted in to skipping tests whose device is absent."""
    return _value("missing_device") == "skip"


def rank_timeout() -> float:
    """Returns the default per-test timeout in seconds.

    Stays well inside Bazel's own test timeout (TEST_TIMEOUT) so that the
    harness, not Bazel, reports a hang with every rank's stack.
    """
    value = _value("rank_timeout")
    if value:
        return float(value)
    bazel_timeout = os.environ.get("TEST_TIMEOUT")
    if bazel_timeout:
        return min(DEFAULT_RANK_TIMEOUT_S, float(bazel_timeout) / 3)
    return DEFAULT_RANK_TIMEOUT_S


def start_method() -> str:
    """Returns the multiprocessing start method for rank processes."""
    return _value("start_method")


def pool_scope() -> str:
    """Returns ``class`` (a pool per test class) or ``session`` (one per process)."""
    return _value("pool_scope")


def known_failures() -> str:
    """Returns ``expect`` (default) or ``strict``; see testing/known_failures.py."""
    return _value("known_failures")
