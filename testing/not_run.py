"""Cases that do not apply here: the record the report reads and pytest's summary.

A case is *not run* when its BUILD declaration excludes it on this device or at this
world size (``testing/applicability.py``), or when the host has fewer accelerators than
the world size needs. Such a case is neither a pass, a failure nor a skip, so it is
recorded apart, with its reason, in ``not_run.json`` in the test's output directory
(Bazel's undeclared outputs, or ``FSDP_TEST_OUTPUT_DIR`` under pytest)::

    {"cases": [{"test_id": "MemoryTest.test_peak_fsdp1", "classname":
        "fsdp.state.memory_test.MemoryTest", "method": "test_peak_fsdp1",
        "file": "fsdp/state/memory_test.py", "device": "cuda", "world_size": 2,
        "reason": "needs 2 cuda devices, 1 visible"}]}

absl's JUnit XML keeps no skip reason, so under Bazel this file is what tells the
report why a case was not run; pytest leaves such cases out of its run altogether and
this file is their only trace besides the summary block (:func:`summary_lines`).
Standard library only: tools/report reads the format without torch.
"""

import collections
import dataclasses
import json
import os
from typing import Dict, Iterable, List

FILE_NAME = "not_run.json"
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

    @property
    def test_id(self) -> str:
        """``<Class>.<method>``, the key test_params.json and known_failures.json use."""
        return f"{self.classname.rsplit('.', 1)[-1]}.{self.method}"

    def to_json(self) -> Dict[str, object]:
        """The case as a JSON object (with ``test_id``)."""
        return dict(dataclasses.asdict(self), test_id=self.test_id)


# What this process has recorded; the file is rewritten from it after each addition, so
# it always holds exactly the cases of this run (as test_params.json does).
_RECORDED: Dict[tuple, NotRun] = {}


def record(cases: Iterable[NotRun], output_dir: str) -> None:
    """Adds ``cases`` to ``<output_dir>/not_run.json``."""
    for case in cases:
        _RECORDED[(case.classname, case.method, case.device, case.world_size)] = case
    write(recorded(), output_dir)


def recorded() -> List[NotRun]:
    """The cases this process has recorded so far."""
    return list(_RECORDED.values())


def write(cases: List[NotRun], output_dir: str) -> str:
    """Writes exactly ``cases`` to ``<output_dir>/not_run.json``; returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILE_NAME)
    ordered = sorted(cases, key=lambda c: (c.file, c.world_size, c.classname, c.method))
    with open(path, "w") as f:
        json.dump({"cases": [c.to_json() for c in ordered]}, f, indent=1, sort_keys=True)
    return path


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
