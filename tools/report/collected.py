"""What the readers collect from the inputs: results, targets, environments, problems."""

import dataclasses
from typing import Dict, List, Optional, Tuple

from tools.report.status import PASS


@dataclasses.dataclass
class TestResult:
    """One test method (or a whole target) from one XML file."""

    label: str  # //fsdp:foo_cpu, or "junit:<file>"
    behaviour: str
    device: str
    method: Optional[str]  # row name (the record's name, else the JUnit name); None = target-level
    api: Optional[str] = None  # fsdp1 / fsdp2 / None (API-neutral)
    status: str = PASS
    raw_name: str = ""  # test name as written in the XML
    test_id: str = ""  # e.g. __main__.MultipleForwardTest.test_x_fsdp1
    message: str = ""
    text: str = ""  # traceback / log tail
    duration: Optional[float] = None
    shard: str = ""  # "1/4"
    run: str = ""  # "2/3"
    ws: Optional[int] = None
    source: str = ""  # path of the file the result came from
    log_path: str = ""  # test.log beside it, if any
    rank_logs: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    anchor: str = ""  # set by build_report for results with detail
    # The case's known torch bug, as its record in cases.json has it: issue, summary,
    # affected, fixed_by, conditions, expected, outcome, torch (testing/known_failures.py).
    known_bug: Optional[Dict[str, str]] = None
    # The torch version of the run (its environment.json), for release columns.
    torch: str = ""

    @property
    def where(self) -> str:
        """The result's target label, with its shard and run if any."""
        bits = [self.label]
        if self.shard:
            bits.append("shard " + self.shard)
        if self.run:
            bits.append("run " + self.run)
        return ", ".join(bits)


@dataclasses.dataclass
class TargetInfo:
    """A test target as seen by `bazel query`."""

    label: str
    behaviour: str
    device: str
    ws: Optional[int]
    apis: Tuple[str, ...]  # API tags; empty = tests every API
    tags: Tuple[str, ...]
    disabled: bool = False
    reason: str = ""


@dataclasses.dataclass
class Problem:
    """An input that could not be read or understood, and why."""

    source: str
    message: str


@dataclasses.dataclass
class Collected:
    """Everything read from the inputs, before arranging."""

    results: List[TestResult] = dataclasses.field(default_factory=list)
    targets: Dict[str, TargetInfo] = dataclasses.field(default_factory=dict)
    # (device, environment dict, source path)
    environments: List[Tuple[str, dict, str]] = dataclasses.field(default_factory=list)
    problems: List[Problem] = dataclasses.field(default_factory=list)
    inputs: List[str] = dataclasses.field(default_factory=list)
    notes: List[str] = dataclasses.field(default_factory=list)
    have_query: bool = False

    def merge(self, other: "Collected") -> None:
        """Appends everything read by `other` to this collection."""
        self.results.extend(other.results)
        self.targets.update(other.targets)
        self.environments.extend(other.environments)
        self.problems.extend(other.problems)
        self.inputs.extend(other.inputs)
        self.notes.extend(other.notes)
        self.have_query = self.have_query or other.have_query


def only_devices(col: Collected, devices) -> Collected:
    """Keeps the given device columns only (report.py --devices)."""
    keep = set(devices)
    out = Collected(
        inputs=col.inputs, notes=col.notes, problems=col.problems, have_query=col.have_query
    )
    out.results = [r for r in col.results if r.device in keep]
    out.targets = {k: t for k, t in col.targets.items() if t.device in keep}
    out.environments = [e for e in col.environments if e[0] in keep]
    return out
