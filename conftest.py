"""pytest path: the same options the Bazel targets pass as flags.

    pytest fsdp/multiple_forward_test.py --device=cuda --world-size=2

Unlike Bazel targets (a pool of ranks per test class), a pytest session reuses
one pool of ranks across test classes (``--pool-scope=session``, the default
here), so device and communicator start-up is paid once.
"""

import os
import random

import pytest

from testing import devices

_OPTIONS = {
    "--device": ("FSDP_TEST_DEVICE", "device the ranks run on: " + ", ".join(devices.DEVICES)),
    "--world-size": ("FSDP_TEST_WORLD_SIZE", "world size of every test (default 2)"),
    "--missing-device": (
        "FSDP_TEST_MISSING_DEVICE",
        "fail (default) or skip (opt-in) when the device is absent",
    ),
    "--rank-timeout": ("FSDP_TEST_RANK_TIMEOUT", "per-test timeout in seconds"),
    "--start-method": ("FSDP_TEST_START_METHOD", "fork (default), forkserver or spawn"),
    "--known-failures": (
        "FSDP_TEST_KNOWN_FAILURES",
        "expect (default): cases of known torch bugs must still fail; "
        "strict: they fail like any test",
    ),
    "--pool-scope": (
        "FSDP_TEST_POOL_SCOPE",
        "session (default): one pool of ranks for every test class; "
        "class: a pool per test class, as Bazel targets do",
    ),
}
_CHOICES = {
    "--device": list(devices.DEVICES),
    "--missing-device": ["fail", "skip"],
    "--start-method": ["fork", "forkserver", "spawn"],
    "--known-failures": ["expect", "strict"],
    "--pool-scope": ["session", "class"],
}


def pytest_addoption(parser):
    group = parser.getgroup("fsdp-conformance")
    for option, (_, help_text) in _OPTIONS.items():
        group.addoption(option, default=None, choices=_CHOICES.get(option), help=help_text)
    group.addoption(
        "--order",
        default=None,
        help="run the tests reversed (reverse) or shuffled (random:SEED), across classes "
        "and files: results must not depend on which tests ran before on the same ranks",
    )


def pytest_collection_modifyitems(session, config, items):
    del session
    order = config.getoption("--order")
    if order is None:
        return
    if order == "reverse":
        items.reverse()
    elif order.startswith("random:") and order[len("random:") :].isdigit():
        random.Random(int(order[len("random:") :])).shuffle(items)
    else:
        raise pytest.UsageError(f"--order must be reverse or random:SEED, not {order!r}")


def pytest_configure(config):
    for option, (env_name, _) in _OPTIONS.items():
        value = config.getoption(option)
        if value is not None:
            os.environ[env_name] = str(value)
    os.environ.setdefault("FSDP_TEST_POOL_SCOPE", "session")
    from absl import flags  # pylint: disable=g-import-not-at-top

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["pytest"], known_only=True)
    from testing import multirank  # pylint: disable=g-import-not-at-top

    multirank.install_process_guards()


def pytest_sessionfinish(session, exitstatus):
    del session, exitstatus
    from testing import multirank  # pylint: disable=g-import-not-at-top

    multirank.close_session_pools()
