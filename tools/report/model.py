"""Data model of the conformance report and the logic that builds the matrix.

collect.py turns files into TestResult / TargetInfo / problems; this module
arranges them into rows (behaviour > test method) and columns (device x FSDP
API), decides the status of every cell and counts the summary.  The renderers
only read the resulting Report.
"""

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

# The device table's loader, which needs no torch (nor does this standard-library tool).
from tools import device_table

_DEVICE_TABLE = device_table.load().DEVICES

# Cell / result statuses.  The value is the label shown to people.
PASS = "pass"
FAIL = "fail"
# A failure caused by a known torch bug (testing/known_failures.py): a failure of
# conformance like FAIL, shown apart so people see which failures are explained.
KNOWN_BUG = "known bug"
FLAKY = "flaky"
SKIPPED = "skipped"
DISABLED = "disabled"
NOT_RUN = "not run"
NO_RESULT = "no result"
MALFORMED = "malformed"
NA = "n/a"

# Statuses that get a detail section (message, traceback, rank logs).
NEEDS_DETAIL = (FAIL, KNOWN_BUG, FLAKY, NO_RESULT, MALFORMED)

# Outcomes the harness records in known_failures.json.
KNOWN_FAILED = ("failed as expected", "failed")
KNOWN_PASSED = "passed"

# Device columns, in the device table's order.
KNOWN_DEVICES = tuple(_DEVICE_TABLE)
KNOWN_APIS = ("fsdp1", "fsdp2")
# Bazel device tags -> device column.
TAG_TO_DEVICE = {kind.tag: name for name, kind in _DEVICE_TABLE.items()}

WHOLE_TARGET = "(whole target)"

_WS_TAG_RE = re.compile(r"^ws(\d+)$")
# Only for targets that no `bazel query` describes (see target_metadata).
_TARGET_RE = re.compile(
    r"^(?P<behaviour>.+?)_(?P<device>%s)(?:_ws(?P<ws>\d+))?$"
    % "|".join(map(re.escape, KNOWN_DEVICES))
)
_API_RE = re.compile(r"(?<![A-Za-z0-9])fsdp([12])(?![0-9])", re.IGNORECASE)


@dataclasses.dataclass
class TestResult:
    """One test method (or a whole target) from one XML file."""

    label: str  # //fsdp:foo_cpu, or "junit:<file>"
    behaviour: str
    device: str
    method: Optional[str]  # row name (API token removed); None = target-level
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
    # The case's known torch bug, as recorded in known_failures.json: issue,
    # summary, affected, fixed_by, conditions, expected, outcome, torch (older
    # records: seen_on instead of the range; see apply_known_failure).
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
            if r.anchor and r.status in NEEDS_DETAIL:
                return r.anchor
        return ""

    @property
    def message(self) -> str:
        """The first failure message among the results, else the cell's reason."""
        for r in self.results:
            if r.status in NEEDS_DETAIL and r.message:
                return r.message
        return self.reason


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
        failed = "%d failed" % (c.get(FAIL, 0) + c.get(KNOWN_BUG, 0))
        if c.get(KNOWN_BUG):
            failed += " (%s)" % known_bugs_phrase(c[KNOWN_BUG])
        line = "%d passed, %s, %d disabled, %d not run" % (
            c.get(PASS, 0),
            failed,
            c.get(DISABLED, 0),
            c.get(NOT_RUN, 0),
        )
        extra = [
            (FLAKY, "flaky"),
            (SKIPPED, "skipped"),
            (NO_RESULT, "without result"),
            (MALFORMED, "malformed"),
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


def known_bugs_phrase(n: int) -> str:
    """'1 known torch bug' / '3 known torch bugs'."""
    return "%d known torch bug%s" % (n, "" if n == 1 else "s")


# --------------------------------------------------------------------------
# Known torch bugs.


def _releases(text: str) -> List[str]:
    return [t.strip() for t in str(text or "").split(",") if t.strip()]


def bug_scope(bug: Dict[str, str]) -> str:
    """Where a recorded bug applies, in words.

    Records with a release range (``affected``, testing/known_failures.py):
    ``"affects torch >=2.10,<2.14.1, fixed by pytorch#187376; shows with world size
    >=2"``. Records written before ranges: ``"seen on torch 2.11, 2.13"``.
    """
    if not bug.get("affected"):
        return "seen on torch %s" % bug.get("seen_on", "?")
    text = "affects torch " + bug["affected"]
    if bug.get("fixed_by"):
        text += ", fixed by " + bug["fixed_by"]
    if bug.get("conditions"):
        text += "; shows with " + bug["conditions"]
    return text


def describe_known_bug(bug: Dict[str, str]) -> str:
    """One line naming the bug, as the harness's TorchBug.describe writes it."""
    return "known torch bug %s: %s (%s)" % (
        bug.get("issue", "?"),
        bug.get("summary", ""),
        bug_scope(bug),
    )


def _expected_to_fail(bug: Dict[str, str]) -> bool:
    """Whether the bug applied to the run that recorded it (its case had to fail)."""
    if bug.get("expected") in ("yes", "no"):
        return bug["expected"] == "yes"
    torch = bug.get("torch", "")  # a record from before ranges: its seen_on list
    return bool(torch) and torch in _releases(bug.get("seen_on"))


def apply_known_failure(r: TestResult, bug: Dict[str, str]) -> None:
    """Sets a result's status from its known-failure record.

    The harness reports a known bug that reproduced as an expected failure, which
    absl's XML writes as a passing case and pytest's as a skipped one: the record
    is what says it failed. Such a case, and one that failed where the bug was not
    expected (outside its range or conditions, or --known_failures=strict),
    becomes KNOWN_BUG. A case that passed where the bug applies is a FAIL: the bug
    did not reproduce, so either the test lost its power to catch it or this
    build has a fix. A pass anywhere else stays a pass.
    """
    r.known_bug = dict(bug)
    outcome = bug.get("outcome", "")
    if outcome in KNOWN_FAILED:
        if r.status in (PASS, SKIPPED, FAIL, KNOWN_BUG):
            r.status = KNOWN_BUG
            if r.message.startswith("expected failure"):
                r.message = ""  # the generic xfail line; the record says more
            if not r.message.startswith("known torch bug"):
                r.message = describe_known_bug(bug) + ("\n" + r.message if r.message else "")
            # The failure itself, if the harness recorded it (an expected failure
            # leaves no message in the XML).
            if bug.get("message") and bug["message"] not in r.message:
                r.message += "\n" + bug["message"]
    elif outcome == KNOWN_PASSED and _expected_to_fail(bug):
        junit = r.message
        r.status = FAIL
        if bug.get("affected"):
            r.message = (
                "known bug did not reproduce: %s passed on torch %s, where %s applies "
                "(%s). Either the test no longer catches the bug, or this build has a "
                "fix (then update affected). The bug: %s"
                % (
                    r.test_id or r.raw_name,
                    bug.get("torch_version") or bug.get("torch", "?"),
                    bug.get("issue", "?"),
                    bug_scope(bug),
                    bug.get("summary", ""),
                )
            )
        else:
            r.message = (
                "known bug did not reproduce: %s passed on torch %s, and %s was "
                "seen on torch %s. Either the test no longer catches the bug, or "
                "this build has a fix (then update seen_on). The bug: %s"
                % (
                    r.test_id or r.raw_name,
                    bug.get("torch", ""),
                    bug.get("issue", "?"),
                    bug.get("seen_on", ""),
                    bug.get("summary", ""),
                )
            )
        if junit and junit not in r.text:
            r.text = junit + ("\n" + r.text if r.text else "")


_ISSUE_RE = re.compile(r"^(?:(?P<repo>[\w.-]+/[\w.-]+)|(?P<short>pytorch))#(?P<n>\d+)$")


def issue_url(issue: str) -> str:
    """A link for `pytorch#123`, `owner/repo#123` or a URL; "" otherwise."""
    issue = (issue or "").strip()
    if re.match(r"^https?://\S+$", issue):
        return issue
    m = _ISSUE_RE.match(issue)
    if not m:
        return ""
    repo = m.group("repo") or "pytorch/pytorch"
    return "https://github.com/%s/issues/%s" % (repo, m.group("n"))


# --------------------------------------------------------------------------
# Name parsing.


def hardware_summary(env: dict) -> str:
    """'2× NVIDIA H200' from an environment.json's device names (or its device)."""
    counted: Dict[str, int] = {}
    for n in env.get("device_names") or []:
        counted[n] = counted.get(n, 0) + 1
    return ", ".join("%d\u00d7 %s" % (c, n) if c > 1 else n for n, c in counted.items()) or str(
        env.get("device", "")
    )


def environment_world_sizes(env: dict) -> str:
    """'2, 4': the world sizes an environment's results ran at, ascending."""
    return ", ".join(
        str(w) for w in sorted(w for w in env.get("_world_sizes", ()) if w is not None)
    )


def missing_environment_reason(report: Report, dev: str) -> str:
    """Why the environment table has no row for ``dev``."""
    if dev in report.ran_devices:
        return "no environment.json found"
    return "no results for this device"


def target_metadata(name: str, tags=(), generator_name: str = "") -> Tuple[str, str, Optional[int]]:
    """(behaviour, device, world size) of a test target, from `bazel query`.

    fsdp_test tags each target with its device's tag and `ws<N>`, and Bazel
    records the macro's `name` (the behaviour) as the target's `generator_name`.
    A target without exactly one device tag falls back to parse_target_name.
    """
    devices = sorted({TAG_TO_DEVICE[t] for t in tags if t in TAG_TO_DEVICE})
    if len(devices) != 1:
        return parse_target_name(name)
    sizes = [int(m.group(1)) for m in map(_WS_TAG_RE.match, tags) if m]
    ws = sizes[0] if len(sizes) == 1 else None
    return generator_name or parse_target_name(name)[0], devices[0], ws


def parse_target_name(name: str) -> Tuple[str, str, Optional[int]]:
    """`multiple_forward_test_cpu_ws4` -> ('multiple_forward_test', 'cpu', 4).

    Only for results whose target no query describes (no --query_xml and no
    tools/bazel, e.g. testlogs copied from another machine, and the committed
    fixtures under tests/testdata/broken): fsdp_test names targets
    `<name>_<device>[_ws<N>]`. Unknown names get the device "other".
    """
    m = _TARGET_RE.match(name)
    if m:
        ws = int(m.group("ws")) if m.group("ws") else None
        return m.group("behaviour"), m.group("device"), ws
    return name, "other", None


def split_api(name: str, api: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """(row name, API) of a test method.

    `api` is the method's `api` parameter as the harness recorded it
    (test_params.json). Without one, the API is the fsdp1/fsdp2 token of the
    name: for methods that fix the API in their body, and for results without
    test_params.json (runs before the harness wrote it, the committed fixtures).
    Either way the row name loses the API token, so the API cases of a method
    share a row:

    test_matches_ddp_fsdp2                -> ('test_matches_ddp', 'fsdp2')
    test_fsdp1_state_dict                 -> ('test_state_dict', 'fsdp1')
    test_prod0 (api='fsdp1', reshard=True) -> ('test_prod (reshard=True)', 'fsdp1')
    test_plain1 ('fsdp2')                 -> ('test_plain', 'fsdp2')
    test_x[fsdp1-bf16]  (pytest)          -> ('test_x[bf16]', 'fsdp1')
    """
    name = name.strip()
    base, params, bracket = name, "", ""
    m = re.match(r"^(\S+?)\s+\((.*)\)\s*$", name, re.S)
    if m:
        base, params = m.group(1), m.group(2)
    else:
        m = re.match(r"^([^\[]+)\[(.*)\]$", name, re.S)
        if m:
            base, bracket = m.group(1), m.group(2)
    if api is None:
        apis = [a.lower() for a in _API_RE.findall(name)]
        api = ("fsdp" + apis[0]) if apis and len(set(apis)) == 1 else None
    # Strip the API token from the method name itself.
    parts = base.split("_")
    kept = [p for p in parts if not _API_RE.fullmatch(p)]
    if api and len(kept) != len(parts):
        base = "_".join(kept)
    if params:
        # absl numbers parameterized cases (test_x0, test_x1); the parameters
        # say what the case is, so drop the index.
        base = re.sub(r"\d+$", "", base) or base
        items = [p.strip() for p in _split_params(params)]
        if api:
            items = [p for p in items if not _API_RE.search(p)]
        items = [p for p in items if p]
        base = base + (" (%s)" % ", ".join(items) if items else "")
    if bracket:
        items = bracket.split("-")
        if api:
            items = [p for p in items if not _API_RE.search(p)]
        base = base + ("[%s]" % "-".join(items) if items else "")
    return base, api


def _split_params(text: str) -> List[str]:
    """Splits 'a=1, b=(2, 3), c' at top-level commas."""
    out, depth, cur, quote = [], 0, [], ""
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur))
    return out


def _order(values, known) -> List[str]:
    values = set(values)
    head = [v for v in known if v in values]
    # Numbers by value, so that a "cpu · torch 2.9.1" column comes before "... 2.10.0".
    return head + sorted(values - set(head), key=natural_key)


def natural_key(text: str) -> Tuple:
    """Sort key that orders the numbers in ``text`` by value: 2.9 < 2.10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text))


# --------------------------------------------------------------------------
# Matrix.


def aggregate(results: List[TestResult]) -> str:
    """The status of a cell from its results, the most severe first."""
    statuses = [r.status for r in results]
    failing = [s for s in statuses if s == FAIL]
    if failing:
        if PASS in statuses and any(r.run for r in results):
            return FLAKY
        return FAIL
    if KNOWN_BUG in statuses:
        return KNOWN_BUG
    for s in (MALFORMED, NO_RESULT):
        if s in statuses:
            return s
    if PASS in statuses:
        return PASS
    if SKIPPED in statuses:
        return SKIPPED
    return statuses[0] if statuses else NOT_RUN


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


def build_report(col: Collected) -> Report:
    """Arranges collected results into the report's matrix, details and counts."""
    inherit_target_api(col.results, col.targets)
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


def inherit_target_api(results: List[TestResult], targets: Dict[str, TargetInfo]) -> None:
    """A target tagged with a single API makes its API-neutral methods that API's."""
    for r in results:
        t = targets.get(r.label)
        if r.api is None and t is not None and len(t.apis) == 1:
            r.api = t.apis[0]


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
            devices=_order(
                {r.device for r in results}
                | {t.device for t in targets.values()}
                | {d for d, _, _ in col.environments},
                KNOWN_DEVICES,
            ),
            apis=_order(
                {r.api for r in results if r.api} | {a for t in targets.values() for a in t.apis},
                KNOWN_APIS,
            ),
            behaviours=_order(
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
                    row.cells[(dev, api)] = Cell(NA, reason="not a case for " + api)
                    continue
                mine = [r for r in rs if r.device == dev and r.api in (api, None)]
                row.cells[(dev, api)] = _cell(
                    mine, beh, dev, api, layout.target_level, beh_targets, used_target_level, qdevs
                )
        else:
            mine = [r for r in rs if r.device == dev]
            cell = _cell(
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
                row.cells[(dev, api)] = _cell(
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
            cell = _cell(mine, beh, dev, None, {}, beh_targets, set(), qdevs)
            cell.span = len(layout.api_cols)
            row.cells[(dev, layout.api_cols[0])] = cell
    return row


def _count(groups: List[Group]) -> Dict[str, int]:
    """Cells per status (n/a cells are not counted)."""
    counts: Dict[str, int] = {}
    for g in groups:
        for row in g.rows:
            for cell in row.cells.values():
                if cell.status != NA:
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
                    if r.status in NEEDS_DETAIL and id(r) not in seen:
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


def _cell(mine, beh, dev, api, target_level, beh_targets, used, qdevs) -> Cell:
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
        if r.known_bug and r.status == PASS
    ]
    if mine:
        # Sizes the declaration or the host excluded (not_run_records), with their reasons.
        not_run = sorted(
            {
                ("ws%d: %s" % (r.ws, r.message)) if r.ws else r.message
                for r in mine
                if r.status == NOT_RUN
            }
        )
        status = aggregate(mine)
        if status == NOT_RUN:
            return Cell(NOT_RUN, list(mine), reason="; ".join(not_run), notes=notes)
        return Cell(status, list(mine), notes=notes + ["not run at " + n for n in not_run])
    tl = [r for r in target_level.get((beh, dev), []) if api is None or r.api in (None, api)]
    if tl:
        used.update(id(r) for r in tl)
        return Cell(aggregate(tl), tl, notes=notes)
    if dev_targets:
        live = [t for t in dev_targets if not t.disabled]
        if not live:
            reasons = sorted({t.reason or "no reason given" for t in dev_targets})
            return Cell(DISABLED, reason="; ".join(reasons))
        return Cell(
            NOT_RUN,
            reason="target %s has no result" % ", ".join(t.label for t in live),
            notes=notes,
        )
    if beh_targets and dev in qdevs:
        return Cell(NA, reason="no target for this device/API")
    return Cell(NOT_RUN, reason="no result for this device")
