"""Names: targets as behaviour, device and world size (from `bazel query`), and orders.

Devices come from the suite's device table (tools/device_table.py, which needs no
torch, nor does this tool).
"""

import re
from typing import List, Optional, Tuple

from tools import device_table

_DEVICE_TABLE = device_table.load().DEVICES

# Device columns, in the device table's order.
KNOWN_DEVICES = tuple(_DEVICE_TABLE)
KNOWN_APIS = ("fsdp1", "fsdp2")
# Bazel device tags -> device column.
TAG_TO_DEVICE = {kind.tag: name for name, kind in _DEVICE_TABLE.items()}


def target_metadata(name: str, tags=(), generator_name: str = "") -> Tuple[str, str, Optional[int]]:
    """(behaviour, device, world size) of a test target, from `bazel query`.

    fsdp_test tags each target with its device's tag and `ws<N>`, and Bazel
    records the macro's `name` (the behaviour) as the target's `generator_name`.
    A target without exactly one device tag is in the device column "other".
    """
    devices = sorted({TAG_TO_DEVICE[t] for t in tags if t in TAG_TO_DEVICE})
    sizes = [int(t[2:]) for t in tags if t.startswith("ws") and t[2:].isdigit()]
    ws = sizes[0] if len(sizes) == 1 else None
    return generator_name or name, devices[0] if len(devices) == 1 else "other", ws


def order(values, known) -> List[str]:
    """``values`` in the order of ``known``, then the rest in natural order."""
    values = set(values)
    head = [v for v in known if v in values]
    # Numbers by value, so that a "cpu · torch 2.9.1" column comes before "... 2.10.0".
    return head + sorted(values - set(head), key=natural_key)


def natural_key(text: str) -> Tuple:
    """Sort key that orders the numbers in ``text`` by value: 2.9 < 2.10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text))


def behaviour_name(pkg: str, behaviour: str, package: str) -> str:
    """Targets in sub-packages of //fsdp keep their sub-path in the row name."""
    if package and pkg.startswith(package + "/"):
        return pkg[len(package) + 1 :] + "/" + behaviour
    if not package and pkg:
        return pkg + "/" + behaviour
    return behaviour
