"""Known torch bugs: test cases that must fail where a bug applies.

A conformance test that catches a real torch bug keeps asserting the correct
behaviour. Its class names the failing cases and the bug: which torch releases
have it, where it was fixed, and under which conditions it shows::

    class UnfreezeTest(multirank.MultiRankTestCase, parameterized.TestCase):
        known_failures = {
            "test_unfrozen_unit_keeps_reduce_dtype_fsdp2": known_failures.TorchBug(
                "pytorch#186998", "FSDP2 fixes a unit's reduce dtype while it is frozen",
                affected=">=2.10,<2.14.1", fixed_by="pytorch#187376"),
        }

``affected`` is a ``packaging`` specifier set, matched against the release part
of ``torch.__version__``: ``2.13.0+cpu`` is 2.13.0, ``2.15.0a0+git1234`` (a
build from source) is 2.15.0. Conditions narrow where the bug shows; a case is
an expected failure only when every one matches:

* ``world_sizes``: alternatives of ``N``, ``>=N``, ``<=N``, ``even``, ``odd``,
  ``any`` (e.g. ``">=2"``: an N x 1 mesh has as many replicas as ranks, and the
  bug needs two);
* ``devices`` / ``backends``: names from testing/devices.py (empty: any);
* ``condition``: a :class:`Condition`, a described predicate on the
  :class:`Case` (world size, device, backend, the case's parameters).

What the harness does with such a case (``--known_failures``, env
``FSDP_TEST_KNOWN_FAILURES``):

* ``expect`` (default), where the bug applies: the case must still fail. It is
  reported as an expected failure (the test target stays green), and the
  conformance report shows it as a failure with the bug's explanation. If it
  passes, the target fails: either the test lost its power to catch the bug, or
  this build carries a fix and ``affected`` needs updating.
* ``expect`` where the bug does not apply, or ``strict`` anywhere: the case is
  an ordinary test; a failure names the known bug and why it was not expected.

The record of every known failure that ran goes into the case's entry of
``cases.json`` (``known_bug``, see testing/case_params.py), for the report.
"""

import dataclasses
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from packaging import specifiers, version

from testing import case_params

MODES = ("expect", "strict")
_SIZE_TERM = re.compile(r"^(any|even|odd|\d+|>=\d+|<=\d+)$")


@dataclasses.dataclass(frozen=True)
class Case:
    """Where a test case runs: what a bug's conditions are matched against."""

    world_size: int
    device: str
    backend: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Condition:
    """A condition a bug needs beyond world size, device and backend.

    Attributes:
      description: what must hold, in words, shown in messages and the report
        (e.g. ``"an N x 1 mesh with at least 2 replicas"``).
      holds: the predicate, given the :class:`Case`.
    """

    description: str
    holds: Callable[[Case], bool]


def world_size_matches(rule: str, size: int) -> bool:
    """True when ``size`` satisfies ``rule`` (alternatives: N, >=N, <=N, even, odd, any)."""
    for term in _size_terms(rule):
        if (
            term == "any"
            or (term == "even" and size % 2 == 0)
            or (term == "odd" and size % 2 == 1)
            or (term.startswith(">=") and size >= int(term[2:]))
            or (term.startswith("<=") and size <= int(term[2:]))
            or (term.isdigit() and size == int(term))
        ):
            return True
    return False


def _size_terms(rule: str) -> List[str]:
    terms = [t.strip() for t in rule.split(",")]
    bad = [t for t in terms if not _SIZE_TERM.match(t)]
    if bad or not terms:
        raise ValueError(f"world size rule {rule!r}: {bad} is not N, >=N, <=N, even, odd or any")
    return terms


def release_of(torch_version: str) -> str:
    """The release part of a torch version: ``"2.13.0+cpu"`` -> ``"2.13.0"``.

    Local tags (``+cpu``, ``+cu130``, ``+git...``) and pre-release markers
    (``a0``, ``rc1``, ``.dev2026...``) are dropped: a source build of the next
    release compares as that release.
    """
    try:
        parts = version.Version(torch_version).release
    except version.InvalidVersion:
        match = re.match(r"\d+(\.\d+)*", torch_version)
        if not match:
            raise ValueError(f"cannot read a release from torch version {torch_version!r}")
        parts = tuple(int(p) for p in match.group(0).split("."))
    return ".".join(str(p) for p in (tuple(parts) + (0, 0))[: max(3, len(parts))])


def torch_version() -> str:
    """The running torch's full version, e.g. ``"2.13.0+cpu"``."""
    import torch

    return torch.__version__


def torch_release() -> str:
    """The running torch's release, e.g. ``"2.13.0"`` (see :func:`release_of`)."""
    return release_of(torch_version())


@dataclasses.dataclass(frozen=True)
class TorchBug:
    """A torch bug that makes a test case fail, and where it applies.

    Attributes:
      issue: where the bug is tracked, e.g. ``"pytorch#186998"``.
      summary: one line saying what goes wrong, shown in failures and the report.
      affected: the releases that have it, a ``packaging`` specifier set such as
        ``">=2.10,<2.14.1"`` (open-ended ``">=2.10"`` while unfixed).
      fixed_by: the upstream change that fixed it, e.g. ``"pytorch#187376"``.
      world_sizes: the world sizes it shows at (see :func:`world_size_matches`).
      devices: the devices it shows on (empty: every device).
      backends: the backends it shows with (empty: every backend).
      condition: any further condition on the case.
    """

    issue: str
    summary: str
    affected: str
    fixed_by: str = ""
    world_sizes: str = "any"
    devices: Tuple[str, ...] = ()
    backends: Tuple[str, ...] = ()
    condition: Optional[Condition] = None

    def __post_init__(self):
        # A bad range or rule is a mistake in the test file: fail at import, not per case.
        try:
            specifiers.SpecifierSet(self.affected)
        except specifiers.InvalidSpecifier as e:
            raise ValueError(f"TorchBug {self.issue}: affected={self.affected!r}: {e}") from None
        if not self.affected.strip():
            raise ValueError(f"TorchBug {self.issue}: affected is empty; say which releases")
        for field in ("devices", "backends"):
            if isinstance(getattr(self, field), str):
                raise TypeError(f"TorchBug {self.issue}: {field} must be a tuple of names")
        _size_terms(self.world_sizes)

    def affects(self, release: str) -> bool:
        """True when torch ``release`` (e.g. ``"2.14.1"``) is in :attr:`affected`."""
        spec = specifiers.SpecifierSet(self.affected, prereleases=True)
        return spec.contains(version.Version(release), prereleases=True)

    def mismatches(self, case: Case, release: str) -> List[str]:
        """Why the bug does not apply to ``case`` on ``release``; empty when it does."""
        why = []
        if not self.affects(release):
            why.append(f"torch {release} is outside {self.affected}")
        if not world_size_matches(self.world_sizes, case.world_size):
            why.append(f"world size {case.world_size} is not {self.world_sizes}")
        if self.devices and case.device not in self.devices:
            why.append(f"device {case.device} is not {'/'.join(self.devices)}")
        if self.backends and case.backend not in self.backends:
            why.append(f"backend {case.backend} is not {'/'.join(self.backends)}")
        if self.condition is not None and not self.condition.holds(case):
            why.append(f"not {self.condition.description}")
        return why

    def conditions(self) -> str:
        """Where the bug shows besides the release, in words ("" when everywhere)."""
        parts = []
        if self.world_sizes != "any":
            parts.append(f"world size {self.world_sizes}")
        if self.devices:
            parts.append("device " + "/".join(self.devices))
        if self.backends:
            parts.append("backend " + "/".join(self.backends))
        if self.condition is not None:
            parts.append(self.condition.description)
        return ", ".join(parts)

    def releases(self) -> str:
        """``"torch >=2.10,<2.14.1, fixed by pytorch#187376"``: the releases it affects."""
        text = f"torch {self.affected}"
        return text + (f", fixed by {self.fixed_by}" if self.fixed_by else "")

    def describe(self) -> str:
        """One line naming the bug, for failure messages and the report."""
        where = self.releases()
        if self.conditions():
            where += f"; shows with {self.conditions()}"
        return f"known torch bug {self.issue}: {self.summary} (affects {where})"


def expected_here(bug: Optional[TorchBug], mode: str, case: Case) -> bool:
    """True when ``bug`` must make ``case`` fail under ``mode`` on this torch."""
    if mode not in MODES:
        raise ValueError(f"known_failures must be one of {', '.join(MODES)}, not {mode!r}")
    return bug is not None and mode == "expect" and not bug.mismatches(case, torch_release())


def record(
    record: Dict[str, Any],
    bug: TorchBug,
    outcome: str,
    output_dir: str,
    *,
    case: Case,
    expected: bool,
    message: str = "",
) -> None:
    """Records how a case with a known bug went, as its ``known_bug`` in ``cases.json``.

    Args:
      record: the case's record (testing/case_params.py ``describe``).
      bug: the case's known bug.
      outcome: ``"failed as expected"``, ``"failed"`` or ``"passed"``.
      output_dir: the test's output directory.
      case: where the case ran.
      expected: whether the bug applied here (the case was an expected failure).
      message: the start of the failure, when the case failed.
    """
    release = torch_release()
    entry = {
        "issue": bug.issue,
        "summary": bug.summary,
        "affected": bug.affected,
        "fixed_by": bug.fixed_by,
        "conditions": bug.conditions(),
        "outcome": outcome,
        "expected": "yes" if expected else "no",
        "torch": release,
        "torch_version": torch_version(),
        "world_size": str(case.world_size),
    }
    if not expected:
        entry["not_expected_because"] = "; ".join(bug.mismatches(case, release)) or "strict mode"
    if message:
        # The JUnit of an expected failure keeps no message: the report shows this one.
        entry["message"] = message[:2000]
    case_params.record(record, output_dir, known_bug=entry)
