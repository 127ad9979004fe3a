"""Loads the device table, testing/devices.py, for tools that must not import torch.

Importing the `testing` package checks for torch, but tools/remote runs under the
system python3 or BuildGrid's environment and tools/report uses the standard library
only. testing/devices.py itself needs nothing else at import time, so these tools
load it by path:

    sys.path.append(<this directory>)  # append: tools/ holds packages named report, remote
    import device_table
    DEVICES = device_table.load().DEVICES
"""

import importlib.util
import os
import sys

_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "testing", "devices.py"
)
_NAME = "fsdp_device_table"


def load():
    """Returns testing/devices.py as a module (loaded once per process)."""
    if _NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(_NAME, _PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module  # dataclasses looks the module up by name
        spec.loader.exec_module(module)
    return sys.modules[_NAME]
