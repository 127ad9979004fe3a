"""Renders a model.Report as a Markdown summary (GitHub-flavoured).

The matrix uses emoji plus a word per cell; failing cells link to an anchor in
the "Failures" section, which holds the message, traceback and rank-log
sections (cut to their last lines; the HTML page has them in full).
"""

from typing import List

from tools.report import model, render_html

M = model

EMOJI = {
    M.PASS: "\u2705 pass",
    M.FAIL: "\u274c **FAIL**",
    M.KNOWN_BUG: "\U0001f41e **KNOWN BUG**",
    M.FLAKY: "\u26a0\ufe0f **FLAKY**",
    M.SKIPPED: "\u21aa\ufe0f skipped",
    M.DISABLED: "\u23f8\ufe0f disabled",
    M.NOT_RUN: "\u25ab\ufe0f not run",
    M.NO_RESULT: "\u2753 **no result**",
    M.MALFORMED: "\u2757 **malformed**",
    M.NA: "\u2014",
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


def _cell(cell: M.Cell) -> str:
    text = EMOJI[cell.status]
    if cell.link:
        word = text.split(" ", 1)
        text = "%s [%s](#%s)" % (word[0], word[1].strip("*"), cell.link)
    if cell.reason and (cell.status == M.DISABLED or (cell.status == M.NOT_RUN and cell.results)):
        text += ": " + _cellesc(render_html._short(cell.reason, 60))
    bug = next((r.known_bug for r in cell.results if r.known_bug), None)
    if cell.status == M.KNOWN_BUG and bug:
        text += " " + _cellesc(bug.get("issue", ""))
        if bug.get("affected"):
            text += " (torch %s)" % _cellesc(bug["affected"])
    if len(cell.results) > 1 and cell.status in (M.PASS, M.FAIL, M.FLAKY):
        failed = sum(1 for r in cell.results if r.status == M.FAIL)
        text += (
            " (%d/%d failed)" % (failed, len(cell.results))
            if failed
            else " \u00d7%d" % len(cell.results)
        )
    dur = render_html.fmt_duration(cell.duration)
    if dur and cell.status not in (M.NOT_RUN, M.DISABLED, M.NA, M.SKIPPED):
        text += " %s" % dur
    return text


def render(report: M.Report, generated: str = "") -> str:
    """The report as Markdown."""
    out: List[str] = ["# FSDP conformance report", ""]
    out.append("**%s**" % report.summary())
    out.append("")
    if generated:
        out.append("Generated %s." % generated)
        out.append("")

    out.append("## Environment")
    out.append("")
    out.append("| device | torch | hardware | count | backend | world size |")
    out.append("|---|---|---|---|---|---|")
    for dev in report.devices:
        envs = report.environments.get(dev)
        if not envs:
            why = model.missing_environment_reason(report, dev)
            out.append("| %s | | %s | | | |" % (dev, why))
            continue
        for env, _ in envs:
            hw = model.hardware_summary(env)
            out.append(
                "| %s | `%s` | %s | %s | %s | %s |"
                % (
                    dev,
                    _cellesc(env.get("torch_version", "?")),
                    _cellesc(hw),
                    env.get("device_count", ""),
                    _cellesc(env.get("backend", "")),
                    model.environment_world_sizes(env),
                )
            )
    out.append("")

    out.append("## Results")
    out.append("")
    api_cols = report.apis or [""]
    if not report.groups:
        out.append("No results found.")
    else:
        heads = [
            "%s %s" % (d, render_html.column_heading(a)) for d in report.devices for a in api_cols
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

    if report.details:
        out.append("## Failures")
        out.append("")
        for r in report.details:
            api = " \u00b7 " + r.api if r.api else ""
            out.append(
                '### <a id="%s"></a>%s: %s \u203a %s \u2014 %s%s'
                % (
                    r.anchor,
                    r.status.upper(),
                    r.behaviour,
                    r.method or M.WHOLE_TARGET,
                    r.device,
                    api,
                )
            )
            out.append("")
            meta = ["`%s`" % r.where]
            if r.test_id:
                meta.append("`%s`" % r.test_id)
            if r.duration is not None:
                meta.append(render_html.fmt_duration(r.duration))
            out.append(" \u00b7 ".join(meta))
            out.append("")
            if r.known_bug:
                b = r.known_bug
                url = M.issue_url(b.get("issue", ""))
                issue = "[%s](%s)" % (b.get("issue"), url) if url else b.get("issue", "?")
                out.append("**Known torch bug %s**: %s  " % (issue, _cellesc(b.get("summary", ""))))
                out.append(
                    "%s \u00b7 this run: torch %s, %s"
                    % (
                        _cellesc(M.bug_scope(b)),
                        _cellesc(b.get("torch_version") or b.get("torch", "?")),
                        _cellesc(b.get("outcome", "?")),
                    )
                )
                out.append("")
            if r.message and not (
                r.known_bug and r.message.strip() == M.describe_known_bug(r.known_bug)
            ):
                out.append(_fence(r.message))
                out.append("")
            if r.text and r.text.strip() != r.message.strip():
                out.append("<details><summary>%s</summary>" % ("Traceback" if r.method else "Log"))
                out.append("")
                out.append(_fence(_last_lines(r.text, MD_LOG_LINES)))
                out.append("")
                out.append("</details>")
                out.append("")
            for name, text in r.rank_logs:
                out.append("<details><summary>%s log</summary>" % name)
                out.append("")
                out.append(_fence(_last_lines(text, MD_LOG_LINES)))
                out.append("")
                out.append("</details>")
                out.append("")

    if report.disabled:
        out.append("## Disabled targets")
        out.append("")
        for t in report.disabled:
            out.append("- `%s`: %s" % (t.label, t.reason or "no reason given"))
        out.append("")

    if report.problems:
        out.append("## Problems reading results")
        out.append("")
        for p in report.problems:
            out.append("- `%s`: %s" % (p.source, p.message))
        out.append("")

    out.append("## Inputs")
    out.append("")
    for i in report.inputs:
        out.append("- `%s`" % i)
    for n in report.notes:
        out.append("- %s" % n)
    return "\n".join(out) + "\n"
