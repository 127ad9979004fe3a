"""The torch release as a dimension of the report (tools/matrix runs one per release).

Each result carries the torch version of its run, read from the
``environment.json`` beside it. When one device's results come from more than one
version, its column splits into one column per version: ``cpu · torch 2.14.1+cu130``.
Everything downstream (build_report, the renderers) sees these as plain
device columns, so the rest of the report needs no change.
"""

import dataclasses
from typing import Dict, List, Optional

from tools.report.collected import Collected, TargetInfo
from tools.report.matrix import Report
from tools.report.names import natural_key
from tools.report.status import FAIL, FLAKY, KNOWN_BUG, PASS

SEPARATOR = " \u00b7 torch "


def tag(part: Collected) -> None:
    """Sets each result's torch version from its run's environment.json.

    Bazel results by their target's environment; results of an input whose
    environments agree on one version (a pytest JUnit file) by that version.
    """
    by_source = {src: env.get("torch_version", "") for _, env, src in part.environments}
    versions = {v for v in by_source.values() if v}
    only = versions.pop() if len(versions) == 1 else ""
    for r in part.results:
        r.torch = r.torch or by_source.get(r.label, "") or only


def column(device: str, version: str) -> str:
    """The column of ``device`` results from torch ``version``."""
    return device + SEPARATOR + version if version else device


def split_columns(col: Collected) -> List[str]:
    """Gives each (device, torch version) a column of its own; returns the versions.

    Only devices whose results come from more than one torch version are split: a
    CPU run merged with a CUDA run of another build keeps plain device columns.
    Returns the torch versions of the split devices (empty when none was split).
    """
    seen: Dict[str, set] = {}
    for r in col.results:
        if r.torch:
            seen.setdefault(r.device, set()).add(r.torch)
    seen = {dev: versions for dev, versions in seen.items() if len(versions) > 1}
    if not seen:
        return []
    # A target's API tags apply to its results in every column; read them before
    # the targets are copied per column.
    for r in col.results:
        if r.device in seen and r.torch:
            r.device = column(r.device, r.torch)
    targets = {}
    for key, t in col.targets.items():
        for version in sorted(seen.get(t.device, ()), key=natural_key) or [""]:
            targets[key + SEPARATOR + version if version else key] = dataclasses.replace(
                t, device=column(t.device, version)
            )
    col.targets = targets
    col.environments = [
        (column(dev, env.get("torch_version", "")) if dev in seen else dev, env, src)
        for dev, env, src in col.environments
    ]
    return sorted(set().union(*seen.values()), key=natural_key)


def dedupe_disabled(report: Report) -> None:
    """Lists each disabled target once, not once per release column."""
    unique: Dict[str, TargetInfo] = {}
    for t in report.disabled:
        unique.setdefault(t.label, dataclasses.replace(t, device=t.device.split(SEPARATOR)[0]))
    report.disabled = list(unique.values())


@dataclasses.dataclass
class ReleaseCounts:
    """Test cases of one torch version, by outcome."""

    torch: str
    passed: int = 0
    failed: int = 0
    expected_failures: int = 0  # known torch bugs that applied and reproduced
    other: int = 0  # skipped, no result, malformed
    seconds: float = 0.0

    def line(self) -> str:
        """``torch 2.14.1+cu130: 120 passed, 0 failed, 3 expected failures (418 s)``."""
        text = "torch %s: %d passed, %d failed, %d expected failures" % (
            self.torch,
            self.passed,
            self.failed,
            self.expected_failures,
        )
        if self.other:
            text += ", %d other" % self.other
        return text + " (%.0f s of tests)" % self.seconds


def counts(col: Collected) -> List[ReleaseCounts]:
    """Per torch version: its test cases (methods) by outcome, and their total time."""
    rows: Dict[str, ReleaseCounts] = {}
    for r in col.results:
        row = rows.setdefault(r.torch or "unknown", ReleaseCounts(r.torch or "unknown"))
        row.seconds += r.duration or 0.0
        if r.method is None and r.status == PASS:
            continue  # a target-level placeholder of a run whose cases are counted
        outcome = (r.known_bug or {}).get("outcome")
        if r.status == PASS:
            row.passed += 1
        elif r.status == KNOWN_BUG and outcome == "failed as expected":
            row.expected_failures += 1
        elif r.status in (FAIL, KNOWN_BUG, FLAKY):
            row.failed += 1
        else:
            row.other += 1
    return [rows[k] for k in sorted(rows, key=natural_key)]


def markdown_table(rows: List[ReleaseCounts], extra: Optional[Dict[str, str]] = None) -> str:
    """The per-release table for report.md (``extra``: more text per torch version)."""
    lines = [
        "## Torch releases",
        "",
        "| torch | passed | failed | expected failures (known bugs) | other | test time |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            "| %s%s | %d | %d | %d | %d | %.0f s |"
            % (
                row.torch,
                (extra or {}).get(row.torch, ""),
                row.passed,
                row.failed,
                row.expected_failures,
                row.other,
                row.seconds,
            )
        )
    return "\n".join(lines) + "\n"
