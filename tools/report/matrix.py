"""The report's matrix: results arranged into rows (behaviour > test method) and
columns (device x FSDP API), with the details, environments and counts the renderers read.
"""

import dataclasses
from typing import Dict, List, Tuple

from tools.report.cells import Cell, cell_of
from tools.report.collected import Collected, Problem, TargetInfo, TestResult
from tools.report.known_bugs import known_bugs_phrase
from tools.report.names import KNOWN_APIS, KNOWN_DEVICES, order
from tools.report import source_paths
from tools.report import status as st

WHOLE_TARGET = "(whole target)"


@dataclasses.dataclass
class Row:
    """One row of the matrix: a test method and its cells per (device, API)."""

    behaviour: str
    method: str
    api_split: bool  # False: one cell spans all APIs
    cells: Dict[Tuple[str, str], Cell] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Group:
    """The rows of one behaviour (one test file)."""

    behaviour: str
    labels: List[str]
    rows: List[Row]


@dataclasses.dataclass
class Report:
    """The arranged report the renderers read."""

    devices: List[str]
    apis: List[str]  # API columns under each device ("" = none)
    groups: List[Group]
    details: List[TestResult]  # results with a detail section, in order
    disabled: List[TargetInfo]
    environments: Dict[str, List[Tuple[dict, List[str]]]]
    problems: List[Problem]
    inputs: List[str]
    notes: List[str]
    counts: Dict[str, int]
    ran_devices: Tuple[str, ...] = ()  # devices with at least one result

    def summary(self) -> str:
        """The one-line count: passed, failed, disabled and not run."""
        c = self.counts
        # Known torch bugs are failures of conformance: counted as failed, and
        # named so that a reader sees how many of the failures are explained.
        failed = "%d failed" % (c.get(st.FAIL, 0) + c.get(st.KNOWN_BUG, 0))
        if c.get(st.KNOWN_BUG):
            failed += " (%s)" % known_bugs_phrase(c[st.KNOWN_BUG])
        line = "%d passed, %s, %d disabled, %d not run" % (
            c.get(st.PASS, 0),
            failed,
            c.get(st.DISABLED, 0),
            c.get(st.NOT_RUN, 0),
        )
        extra = [
            (st.FLAKY, "flaky"),
            (st.SKIPPED, "skipped"),
            (st.NO_RESULT, "without result"),
            (st.MALFORMED, "malformed"),
        ]
        for key, word in extra:
            if c.get(key):
                line += ", %d %s" % (c[key], word)
        if self.problems:
            line += " (%d problem%s reading results)" % (
                len(self.problems),
                "" if len(self.problems) == 1 else "s",
            )
        return line


def build_report(col: Collected) -> Report:
    """Arranges collected results into the report's matrix, details and counts."""
    _shorten_paths(col.results)
    layout = _Layout.of(col)
    groups = [_group(layout, beh) for beh in layout.behaviours]
    return Report(
        devices=layout.devices,
        apis=layout.apis,
        groups=groups,
        details=_assign_anchors(groups),
        disabled=sorted((t for t in col.targets.values() if t.disabled), key=lambda t: t.label),
        environments=_group_environments(col.environments),
        problems=col.problems,
        inputs=col.inputs,
        notes=col.notes,
        counts=_count(groups),
        ran_devices=tuple(sorted({r.device for r in col.results})),
    )


def _shorten_paths(results: List[TestResult]) -> None:
    """Cuts sandbox and environment prefixes from the text the report shows."""
    for r in results:
        r.message, r.text = source_paths.shorten(r.message), source_paths.shorten(r.text)
        r.rank_logs = [(name, source_paths.shorten(log)) for name, log in r.rank_logs]


@dataclasses.dataclass
class _Layout:
    """The matrix's columns and behaviours, and the results indexed for cells."""

    results: List[TestResult]
    targets: Dict[str, TargetInfo]
    devices: List[str]
    apis: List[str]
    behaviours: List[str]
    # (behaviour, method) -> results of that method; (behaviour, device) ->
    # results of whole targets (crashes, missing XML).
    method_results: Dict[Tuple[str, str], List[TestResult]]
    target_level: Dict[Tuple[str, str], List[TestResult]]

    @property
    def api_cols(self) -> List[str]:
        return self.apis or [""]

    @property
    def query_devices(self) -> set:
        """Devices the query knows: there, a missing target means "no such case"."""
        return {t.device for t in self.targets.values()}

    @classmethod
    def of(cls, col: Collected) -> "_Layout":
        results, targets = col.results, col.targets
        method_results: Dict[Tuple[str, str], List[TestResult]] = {}
        target_level: Dict[Tuple[str, str], List[TestResult]] = {}
        for r in results:
            if r.method is None:
                target_level.setdefault((r.behaviour, r.device), []).append(r)
            else:
                method_results.setdefault((r.behaviour, r.method), []).append(r)
        return cls(
            results=results,
            targets=targets,
            devices=order(
                {r.device for r in results}
                | {t.device for t in targets.values()}
                | {d for d, _, _ in col.environments},
                KNOWN_DEVICES,
            ),
            apis=order(
                {r.api for r in results if r.api} | {a for t in targets.values() for a in t.apis},
                KNOWN_APIS,
            ),
            behaviours=order(
                {r.behaviour for r in results} | {t.behaviour for t in targets.values()}, ()
            ),
            method_results=method_results,
            target_level=target_level,
        )


def _group(layout: _Layout, beh: str) -> Group:
    """One behaviour: a row per test method, plus a whole-target row if needed."""
    beh_targets = [t for t in layout.targets.values() if t.behaviour == beh]
    labels = sorted(
        {t.label for t in beh_targets} | {r.label for r in layout.results if r.behaviour == beh}
    )
    used_target_level: set = set()
    rows = [
        _method_row(layout, beh, method, beh_targets, used_target_level)
        for method in sorted(m for (b, m) in layout.method_results if b == beh)
    ]
    # Target-level results (crashes, missing XML) or query-only targets with
    # no method known anywhere get one row for the whole target.
    leftover = [
        r
        for key, rs in layout.target_level.items()
        if key[0] == beh
        for r in rs
        if id(r) not in used_target_level
    ]
    if leftover or not rows:
        rows.append(_whole_target_row(layout, beh, leftover, beh_targets))
    return Group(beh, labels, rows)


def _method_row(
    layout: _Layout, beh: str, method: str, beh_targets: List[TargetInfo], used_target_level: set
) -> Row:
    rs = layout.method_results[(beh, method)]
    row_apis = {r.api for r in rs if r.api}
    row = Row(beh, method, api_split=bool(row_apis))
    qdevs = layout.query_devices
    for dev in layout.devices:
        if row.api_split:
            for api in layout.api_cols:
                if api not in row_apis:
                    row.cells[(dev, api)] = Cell(st.NA, reason="not a case for " + api)
                    continue
                mine = [r for r in rs if r.device == dev and r.api in (api, None)]
                row.cells[(dev, api)] = cell_of(
                    mine, beh, dev, api, layout.target_level, beh_targets, used_target_level, qdevs
                )
        else:
            mine = [r for r in rs if r.device == dev]
            cell = cell_of(
                mine, beh, dev, None, layout.target_level, beh_targets, used_target_level, qdevs
            )
            cell.span = len(layout.api_cols)
            row.cells[(dev, layout.api_cols[0])] = cell
    return row


def _whole_target_row(
    layout: _Layout, beh: str, leftover: List[TestResult], beh_targets: List[TargetInfo]
) -> Row:
    # Split by API only when some target of this behaviour is API-specific.
    split = layout.apis and any(t.apis for t in beh_targets)
    row = Row(beh, WHOLE_TARGET, api_split=bool(split))
    qdevs = layout.query_devices
    for dev in layout.devices:
        mine = [r for r in leftover if r.device == dev]
        if split:
            for api in layout.api_cols:
                row.cells[(dev, api)] = cell_of(
                    [r for r in mine if r.api in (None, api)],
                    beh,
                    dev,
                    api,
                    {},
                    beh_targets,
                    set(),
                    qdevs,
                )
        else:
            cell = cell_of(mine, beh, dev, None, {}, beh_targets, set(), qdevs)
            cell.span = len(layout.api_cols)
            row.cells[(dev, layout.api_cols[0])] = cell
    return row


def _count(groups: List[Group]) -> Dict[str, int]:
    """Cells per status (n/a cells are not counted)."""
    counts: Dict[str, int] = {}
    for g in groups:
        for row in g.rows:
            for cell in row.cells.values():
                if cell.status != st.NA:
                    counts[cell.status] = counts.get(cell.status, 0) + 1
    return counts


def _assign_anchors(groups: List[Group]) -> List[TestResult]:
    """Numbers the results that get a detail section, in matrix order."""
    details: List[TestResult] = []
    seen = set()
    for g in groups:
        for row in g.rows:
            for cell in row.cells.values():
                for r in cell.results:
                    if r.status in st.NEEDS_DETAIL and id(r) not in seen:
                        seen.add(id(r))
                        r.anchor = "r%d" % (len(details) + 1)
                        details.append(r)
    return details


def _group_environments(
    environments: List[Tuple[str, dict, str]],
) -> Dict[str, List[Tuple[dict, List[str]]]]:
    """Per device, the distinct environments (world sizes merged) and sources."""
    envs: Dict[str, List[Tuple[dict, List[str]]]] = {}

    # Per-run facts (which devices a test was given) do not split an environment.
    def strip(e):
        return {
            k: v
            for k, v in e.items()
            if k not in ("world_size", "passed_env", "device_uuids") and not k.startswith("_")
        }

    for dev, env, src in environments:
        lst = envs.setdefault(dev, [])
        for known, srcs in lst:
            if strip(known) == strip(env):
                known.setdefault("_world_sizes", set()).add(env.get("world_size"))
                srcs.append(src)
                break
        else:
            env = dict(env)
            env["_world_sizes"] = {env.get("world_size")}
            lst.append((env, [src]))
    return envs
