"""Renders a model.Report as a Markdown summary (GitHub-flavoured).

The matrix uses emoji plus a word per cell; failing cells link to an anchor in
the "Failures" section, which holds the message, traceback and rank-log
sections (cut to their last lines; the HTML page has them in full).
"""

from typing import List

from tools.report.cells import Cell
from tools.report.collected import TestResult
from tools.report.known_bugs import bug_scope, describe_known_bug, issue_url
from tools.report.matrix import WHOLE_TARGET, Report
from tools.report import presentation
from tools.report import status as st

EMOJI = {
    st.PASS: "\u2705 pass",
    st.FAIL: "\u274c **FAIL**",
    st.KNOWN_BUG: "\U0001f41e **KNOWN BUG**",
    st.FLAKY: "\u26a0\ufe0f **FLAKY**",
    st.SKIPPED: "\u21aa\ufe0f skipped",
    st.DISABLED: "\u23f8\ufe0f disabled",
    st.NOT_RUN: "\u25ab\ufe0f not run",
    st.NO_RESULT: "\u2753 **no result**",
    st.MALFORMED: "\u2757 **malformed**",
    st.NA: "\u2014",
}
MD_LOG_LINES = 40


def _cellesc(text: str) -> str:
    text = " ".join(str(text).split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _fence(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return "%s\n%s\n%s" % (fence, text.rstrip("\n"), fence)


def _last_lines(text: str, n: int) -> str:
    lines = text.rstrip("\n").splitlines()
    if len(lines) <= n:
        return "\n".join(lines)
    return "[... %d lines cut; see report.html ...]\n%s" % (len(lines) - n, "\n".join(lines[-n:]))


def _cell(cell: Cell) -> str:
    text = EMOJI[cell.status]
    if cell.link:
        word = text.split(" ", 1)
        text = "%s [%s](#%s)" % (word[0], word[1].strip("*"), cell.link)
    if cell.reason and cell.status in (st.DISABLED, st.NOT_RUN):
        text += ": " + _cellesc(presentation.shorten(cell.reason, 60))
    bug = next((r.known_bug for r in cell.results if r.known_bug), None)
    if cell.status == st.KNOWN_BUG and bug:
        text += " " + _cellesc(bug.get("issue", ""))
        if bug.get("affected"):
            text += " (torch %s)" % _cellesc(bug["affected"])
    if len(cell.results) > 1 and cell.status in (st.PASS, st.FAIL, st.FLAKY):
        failed = sum(1 for r in cell.results if r.status == st.FAIL)
        text += (
            " (%d/%d failed)" % (failed, len(cell.results))
            if failed
            else " \u00d7%d" % len(cell.results)
        )
    dur = presentation.fmt_duration(cell.duration)
    if dur and cell.status not in (st.NOT_RUN, st.DISABLED, st.NA, st.SKIPPED):
        text += " %s" % dur
    return text


def _environment(report: Report) -> List[str]:
    out = ["## Environment", ""]
    out.append("| device | torch | hardware | count | backend | world size |")
    out.append("|---|---|---|---|---|---|")
    for dev in report.devices:
        envs = report.environments.get(dev)
        if not envs:
            why = presentation.missing_environment_reason(report, dev)
            out.append("| %s | | %s | | | |" % (dev, why))
            continue
        for env, _ in envs:
            hw = presentation.hardware_summary(env)
            out.append(
                "| %s | `%s` | %s | %s | %s | %s |"
                % (
                    dev,
                    _cellesc(env.get("torch_version", "?")),
                    _cellesc(hw),
                    env.get("device_count", ""),
                    _cellesc(env.get("backend", "")),
                    presentation.environment_world_sizes(env),
                )
            )
    out.append("")
    return out


def _results(report: Report) -> List[str]:
    out = ["## Results", ""]
    api_cols = report.apis or [""]
    if not report.groups:
        out.append("No results found.")
        out.append("")
        return out
    heads = [
        "%s %s" % (d, presentation.column_heading(a)) for d in report.devices for a in api_cols
    ]
    out.append("| behaviour / test | %s |" % " | ".join(heads))
    out.append("|---|%s" % ("---|" * len(heads)))
    for g in report.groups:
        out.append("| **%s** |%s" % (_cellesc(g.behaviour), " |" * len(heads)))
        for row in g.rows:
            cells = []
            for dev in report.devices:
                spanning = None
                for api in api_cols:
                    cell = row.cells.get((dev, api)) or spanning
                    if cell is not None and cell.span > 1:
                        spanning = cell
                    cells.append(_cell(cell) if cell else "")
            out.append(
                "| &nbsp;&nbsp;`%s` | %s |"
                % (_cellesc(row.method).replace("`", "'"), " | ".join(cells))
            )
    out.append("")
    return out


def _known_bug(b: dict) -> List[str]:
    url = issue_url(b.get("issue", ""))
    issue = "[%s](%s)" % (b.get("issue"), url) if url else b.get("issue", "?")
    return [
        "**Known torch bug %s**: %s  " % (issue, _cellesc(b.get("summary", ""))),
        "%s \u00b7 this run: torch %s, %s"
        % (
            _cellesc(bug_scope(b)),
            _cellesc(b.get("torch_version") or b.get("torch", "?")),
            _cellesc(b.get("outcome", "?")),
        ),
        "",
    ]


def _folded(summary: str, text: str) -> List[str]:
    """A collapsed block with the last lines of ``text``."""
    return [
        "<details><summary>%s</summary>" % summary,
        "",
        _fence(_last_lines(text, MD_LOG_LINES)),
        "",
        "</details>",
        "",
    ]


def _failure(r: TestResult) -> List[str]:
    api = " \u00b7 " + r.api if r.api else ""
    out = [
        '### <a id="%s"></a>%s: %s \u203a %s \u2014 %s%s'
        % (r.anchor, r.status.upper(), r.behaviour, r.method or WHOLE_TARGET, r.device, api),
        "",
    ]
    meta = ["`%s`" % r.where]
    if r.test_id:
        meta.append("`%s`" % r.test_id)
    if r.duration is not None:
        meta.append(presentation.fmt_duration(r.duration))
    out += [" \u00b7 ".join(meta), ""]
    if r.known_bug:
        out += _known_bug(r.known_bug)
    if r.message and not (r.known_bug and r.message.strip() == describe_known_bug(r.known_bug)):
        out += [_fence(r.message), ""]
    if r.text and r.text.strip() != r.message.strip():
        out += _folded("Traceback" if r.method else "Log", r.text)
    for name, text in r.rank_logs:
        out += _folded("%s log" % name, text)
    return out


def _lists(report: Report) -> List[str]:
    """Disabled targets, problems and inputs."""
    out = []
    if report.disabled:
        out += ["## Disabled targets", ""]
        out += ["- `%s`: %s" % (t.label, t.reason or "no reason given") for t in report.disabled]
        out.append("")
    if report.problems:
        out += ["## Problems reading results", ""]
        out += ["- `%s`: %s" % (p.source, p.message) for p in report.problems]
        out.append("")
    out += ["## Inputs", ""]
    out += ["- `%s`" % i for i in report.inputs]
    out += ["- %s" % n for n in report.notes]
    return out


def render(report: Report, generated: str = "") -> str:
    """The report as Markdown."""
    out: List[str] = ["# FSDP conformance report", ""]
    out.append("**%s**" % report.summary())
    out.append("")
    if generated:
        out.append("Generated %s." % generated)
        out.append("")
    out += _environment(report)
    out += _results(report)
    if report.details:
        out += ["## Failures", ""]
        for r in report.details:
            out += _failure(r)
    out += _lists(report)
    return "\n".join(out) + "\n"
