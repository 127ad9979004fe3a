"""pytest path: the same options the Bazel targets pass as flags.

    pytest fsdp/multiple_forward_test.py --device=cuda

Each test runs at every world size its BUILD declaration gives for the device
and the host can hold (``testing/pytest_plugin.py``); ``--world-size=N`` runs
size N only. Unlike Bazel targets (a pool of ranks per test class), a pytest
session reuses one pool of ranks across test classes (``--pool-scope=session``,
the default here), so device and communicator start-up is paid once.
"""

import os
import random

import pytest

from testing import options

# The world-size plan: one item per declared world size, and the not-run block.
pytest_plugins = ("testing.pytest_plugin",)


def pytest_addoption(parser):
    # One pytest option per entry of the harness's option table (testing/options.py).
    group = parser.getgroup("fsdp-conformance")
    for option in options.OPTIONS:
        group.addoption(
            option.pytest_flag, default=None, choices=option.choices, help=option.describe()
        )
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
    for option in options.OPTIONS:
        value = config.getoption(option.pytest_flag)
        if value is not None:
            os.environ[option.env] = str(value)
        elif option.pytest_default:
            os.environ.setdefault(option.env, option.pytest_default)
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["pytest"], known_only=True)
    from testing import multirank

    multirank.install_process_guards()


def pytest_sessionfinish(session, exitstatus):
    del session, exitstatus
    from testing import multirank

    multirank.close_session_pools()
