"""pytest path: the same options the Bazel targets pass as flags.

    pytest fsdp/multiple_forward_test.py --device=cuda

Each test runs at every world size its BUILD declaration gives for the device
and the host can hold (``testing/pytest_plugin.py``); ``--world-size=N`` runs
size N only. Unlike Bazel targets (a pool of ranks per test class), a pytest
session reuses one pool of ranks across test classes (``--pool-scope=session``,
the default here), so device and communicator start-up is paid once.
"""

import os

from testing import devices

# The world-size plan: one item per declared world size, and the not-run block.
pytest_plugins = ("testing.pytest_plugin",)

_OPTIONS = {
    "--device": ("FSDP_TEST_DEVICE", "device the ranks run on: " + ", ".join(devices.DEVICES)),
    "--world-size": (
        "FSDP_TEST_WORLD_SIZE",
        "run this world size only (default: every size each test's BUILD declaration "
        "gives for the device; sizes a test cannot run at are listed as not run)",
    ),
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
