"""Which world sizes a test case runs at on this host under pytest, and why not the rest.

Bazel makes one target per declared world size (``tools/defs.bzl``); pytest has no
targets, so the pytest plugin (``testing/pytest_plugin.py``) asks this module, for
every collected test method, which sizes to run it at:

* without ``--world-size``: every size the file's BUILD declaration gives for the
  device (``Declaration.world_sizes_for``, the sizes Bazel makes targets for);
* with ``--world-size=N``: N alone.

A size is then *not run*, with its reason, when the declaration excludes the method
there (``valid_world_sizes``, ``cases``, ``disabled``), or when the host has some
devices of an accelerator but fewer than the size needs. A host with none of the
requested device runs every size, so each fails loudly
(``cuda requested: 0 devices visible; ...``) instead of quietly testing nothing.

Standard library only, so the self-tests can call it with a simulated device count.
"""

import dataclasses
from typing import List, Optional

from testing import applicability
from testing import devices


@dataclasses.dataclass(frozen=True)
class PlannedSize:
    """One world size of one test method: run it, or the reason it is not run."""

    world_size: int
    not_run: Optional[str] = None


def plan_method(
    declaration: Optional[applicability.Declaration],
    method: str,
    device: str,
    accelerator: bool,
    visible: int,
    only: Optional[int] = None,
) -> List[PlannedSize]:
    """The world sizes of ``method`` on this host, in increasing order.

    Args:
      declaration: the file's BUILD declaration (None: the defaults of a file
        without one).
      method: the test method's name, as unittest names it.
      device: the requested device (``cpu``, ``cuda``...).
      accelerator: whether ``device`` gives each rank a device of its own.
      visible: how many devices of ``device`` are visible (ignored for CPU).
      only: the world size ``--world-size`` restricts the run to, if given.
    """
    declaration = declaration or applicability.Declaration()
    sizes = [only] if only else declaration.world_sizes_for(device, accelerator)
    if not sizes:
        # Only a declaration outside BUILD (FSDP_TEST_APPLICABILITY set by hand) can
        # exclude every default size; list them as not run rather than drop the case.
        sizes = applicability.default_world_sizes(accelerator)
    planned = []
    for size in sizes:
        reason = declaration.not_run_reason(method, device, size)
        if reason is None and accelerator and 0 < visible < size:
            reason = f"needs {size} {device} devices, {visible} visible"
        planned.append(PlannedSize(size, reason))
    return planned


def plan(
    test_file: str,
    method: str,
    device: devices.DeviceKind,
    visible: int,
    only: Optional[int] = None,
) -> List[PlannedSize]:
    """What the pytest plugin runs of ``method`` of ``test_file`` (see plan_method).

    The declaration is the one the harness applies (``applicability.for_test_file``:
    the package's BUILD file, or ``FSDP_TEST_APPLICABILITY`` when set). Raises
    ValueError for a BUILD file it cannot read.
    """
    declaration = applicability.for_test_file(test_file)
    return plan_method(declaration, method, device.name, device.accelerator, visible, only)
