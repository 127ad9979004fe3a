"""Cases that do not apply here: their record for the report, and pytest's summary.

A case is *not run* when its BUILD declaration excludes it on this device or at this
world size (``testing/applicability.py``), or when the host has fewer accelerators than
the world size needs. Such a case is neither a pass, a failure nor a skip: its record in
``cases.json`` (testing/case_params.py) carries the reason as ``not_run``.

absl's JUnit XML keeps no skip reason, so under Bazel that record is what tells the
report why a case was not run; pytest leaves such cases out of its run altogether and
the record is their only trace besides the summary block (:func:`summary_lines`).
"""

import collections
import dataclasses
from typing import List

from testing import case_params

# The start of a skip reason that means "this case does not apply here".
PREFIX = "not run: "


@dataclasses.dataclass(frozen=True)
class NotRun:
    """One case at one world size that does not apply on this host, and why."""

    classname: str  # <module>.<Class>, as pytest's JUnit XML writes it
    method: str
    file: str  # the test file, relative to the repository root where possible
    device: str
    world_size: int
    reason: str


def record(cls: type, case: NotRun, output_dir: str) -> None:
    """Records ``case`` (a method of ``cls``) as not run, with its reason, in cases.json."""
    described = case_params.describe(
        cls, case.method, device=case.device, world_size=case.world_size
    )
    case_params.record(described, output_dir, not_run=case.reason)


def summary_lines(cases: List[NotRun]) -> List[str]:
    """The block pytest prints at its end: a count, then file / world size / reason.

    Example::

        not run: 5 cases
          fsdp/state/memory_cuda_test.py  ws2  3 cases  disabled on cpu: CUDA ...
          fsdp/training/parity_test.py    ws2  2 cases  needs 2 cuda devices, 1 visible
    """
    if not cases:
        return []
    groups = collections.Counter((c.file, c.world_size, c.reason) for c in cases)
    width = max(len(file) for file, _, _ in groups)
    lines = [f"not run: {len(cases)} case{'' if len(cases) == 1 else 's'}"]
    for (file, size, reason), count in sorted(groups.items()):
        noun = "case" if count == 1 else "cases"
        lines.append(f"  {file:<{width}}  ws{size}  {count} {noun}  {reason}")
    return lines
