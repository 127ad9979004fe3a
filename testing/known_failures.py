"""Known torch bugs: tests that must fail on the torch releases a bug was seen on.

A conformance test that catches a real torch bug keeps asserting the correct
behaviour. Its class names the failing cases and the bug::

    class UnfreezeTest(multirank.MultiRankTestCase, parameterized.TestCase):
        known_failures = {
            "test_unfrozen_unit_keeps_reduce_dtype_fsdp2": known_failures.TorchBug(
                "pytorch#186998", "FSDP2 fixes a unit's reduce dtype while it is frozen",
                seen_on=("2.11", "2.13")),
        }

What the harness then does with such a case (``--known_failures``, env
``FSDP_TEST_KNOWN_FAILURES``):

* ``expect`` (default), on a torch release in ``seen_on``: the case must still
  fail. It is reported as an expected failure (the test target stays green), and
  the conformance report shows it as a failure with the bug's explanation. If it
  passes, the target fails: either the test lost its power to catch the bug, or
  this build carries a fix and ``seen_on`` needs updating. Either way a person
  must look, so it is never quietly green.
* ``expect`` on any other release, or ``strict`` anywhere: the case is an
  ordinary test; a failure names the known bug in its message.

The record of every known failure that ran goes to ``known_failures.json`` in the
test's output directory, beside ``test_params.json``, for the report.
"""

import dataclasses
import json
import os
from typing import Dict, Optional, Tuple

FILE_NAME = "known_failures.json"
MODES = ("expect", "strict")

_RECORDED: Dict[str, Dict[str, str]] = {}


@dataclasses.dataclass(frozen=True)
class TorchBug:
    """A torch bug that makes a test case fail.

    Attributes:
      issue: where the bug is tracked, e.g. ``"pytorch#186998"``.
      summary: one line saying what goes wrong, shown in failures and the report.
      seen_on: torch releases (``"major.minor"``) the failure was observed on.
    """

    issue: str
    summary: str
    seen_on: Tuple[str, ...]

    def describe(self) -> str:
        """One line naming the bug, for failure messages and the report."""
        return (
            f"known torch bug {self.issue}: {self.summary} "
            f"(seen on torch {', '.join(self.seen_on)})"
        )


def torch_release() -> str:
    """The running torch's ``major.minor``, e.g. ``"2.13"``."""
    import torch

    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def expected_here(bug: Optional[TorchBug], mode: str) -> bool:
    """True when ``bug`` must make its case fail under ``mode`` on this torch."""
    if mode not in MODES:
        raise ValueError(f"known_failures must be one of {', '.join(MODES)}, not {mode!r}")
    return bug is not None and mode == "expect" and torch_release() in bug.seen_on


def record(key: str, bug: TorchBug, outcome: str, output_dir: str, message: str = "") -> None:
    """Adds one known-failure result to ``<output_dir>/known_failures.json``.

    Args:
      key: ``<Class>.<method>``, as ``test_params.json`` keys results.
      bug: the case's known bug.
      outcome: ``"failed as expected"``, ``"failed"`` or ``"passed"``.
      output_dir: the test's output directory.
      message: the start of the failure, when the case failed.
    """
    _RECORDED[key] = {
        "issue": bug.issue,
        "summary": bug.summary,
        "seen_on": ", ".join(bug.seen_on),
        "outcome": outcome,
        "torch": torch_release(),
    }
    if message:
        # The JUnit of an expected failure keeps no message: the report shows this one.
        _RECORDED[key]["message"] = message[:2000]
    with open(os.path.join(output_dir, FILE_NAME), "w") as f:
        json.dump(_RECORDED, f, indent=1, sort_keys=True)
