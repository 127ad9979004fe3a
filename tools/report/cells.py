"""One cell of the matrix: its status, from the results (or targets) behind it."""

import dataclasses
from typing import List, Optional

from tools.report.collected import TestResult
from tools.report.known_bugs import bug_scope
from tools.report import status as st


@dataclasses.dataclass
class Cell:
    """One cell of the matrix: a status and the results behind it."""

    status: str
    results: List[TestResult] = dataclasses.field(default_factory=list)
    reason: str = ""  # disabled reason / n/a explanation
    span: int = 1  # API columns covered (API-neutral rows)
    notes: List[str] = dataclasses.field(default_factory=list)

    @property
    def duration(self) -> Optional[float]:
        """Total duration of the cell's results, or None if none recorded one."""
        times = [r.duration for r in self.results if r.duration is not None]
        return sum(times) if times else None

    @property
    def link(self) -> str:
        """Anchor of the first result with a detail section."""
        for r in self.results:
            if r.anchor and r.status in st.NEEDS_DETAIL:
                return r.anchor
        return ""

    @property
    def message(self) -> str:
        """The first failure message among the results, else the cell's reason."""
        for r in self.results:
            if r.status in st.NEEDS_DETAIL and r.message:
                return r.message
        return self.reason


def aggregate(results: List[TestResult]) -> str:
    """The status of a cell from its results, the most severe first."""
    statuses = [r.status for r in results]
    failing = [s for s in statuses if s == st.FAIL]
    if failing:
        if st.PASS in statuses and any(r.run for r in results):
            return st.FLAKY
        return st.FAIL
    if st.KNOWN_BUG in statuses:
        return st.KNOWN_BUG
    for s in (st.MALFORMED, st.NO_RESULT):
        if s in statuses:
            return s
    if st.PASS in statuses:
        return st.PASS
    if st.SKIPPED in statuses:
        return st.SKIPPED
    return statuses[0] if statuses else st.NOT_RUN


def cell_of(mine, beh, dev, api, target_level, beh_targets, used, qdevs) -> Cell:
    """Status of one cell given its method-level results."""
    dev_targets = [
        t for t in beh_targets if t.device == dev and (api is None or not t.apis or api in t.apis)
    ]
    notes = [
        "%s is disabled: %s" % (t.label, t.reason or "no reason given")
        for t in dev_targets
        if t.disabled
    ]
    notes += [
        "%s did not occur on torch %s (%s)"
        % (
            r.known_bug.get("issue", "?"),
            r.known_bug.get("torch_version") or r.known_bug.get("torch", "?"),
            r.known_bug.get("not_expected_because") or bug_scope(r.known_bug),
        )
        for r in mine
        if r.known_bug and r.status == st.PASS
    ]
    if mine:
        # Sizes the declaration or the host excluded (case_records), with their reasons.
        not_run = sorted(
            {
                ("ws%d: %s" % (r.ws, r.message)) if r.ws else r.message
                for r in mine
                if r.status == st.NOT_RUN
            }
        )
        status = aggregate(mine)
        if status == st.NOT_RUN:
            return Cell(st.NOT_RUN, list(mine), reason="; ".join(not_run), notes=notes)
        return Cell(status, list(mine), notes=notes + ["not run at " + n for n in not_run])
    tl = [r for r in target_level.get((beh, dev), []) if api is None or r.api in (None, api)]
    if tl:
        used.update(id(r) for r in tl)
        return Cell(aggregate(tl), tl, notes=notes)
    if dev_targets:
        live = [t for t in dev_targets if not t.disabled]
        if not live:
            reasons = sorted({t.reason or "no reason given" for t in dev_targets})
            return Cell(st.DISABLED, reason="; ".join(reasons))
        return Cell(st.NOT_RUN, reason=_no_result_reason(live), notes=notes)
    if beh_targets and dev in qdevs:
        return Cell(st.NA, reason="no target for this device/API")
    return Cell(st.NOT_RUN, reason="no result for this device")


def _no_result_reason(targets) -> str:
    """Why targets that exist have no result: a run without the large ones, or unknown."""
    if all("large" in t.tags for t in targets):
        # The default run leaves large targets out; --config=large runs them. The
        # labels are in the row group's heading already.
        return "large target, left out of this run (--config=large runs it)"
    return "target %s has no result" % ", ".join(t.label for t in targets)
