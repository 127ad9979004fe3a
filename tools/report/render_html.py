"""Renders a model.Report as one self-contained HTML page (inline CSS, no JS).

Every status has a text label as well as a colour, so the page reads the same
printed in black and white.  Cells that need explaining (failures, missing or
malformed results) link to a detail section with the message, traceback and
the failing test's part of each rank log.
"""

import html
from typing import List, Optional

from tools.report import model

M = model

LABELS = {
    M.PASS: ("\u2714", "PASS"),
    M.FAIL: ("\u2718", "FAIL"),
    M.KNOWN_BUG: ("\u2691", "KNOWN BUG"),
    M.FLAKY: ("\u2248", "FLAKY"),
    M.SKIPPED: ("\u21b7", "SKIPPED"),
    M.DISABLED: ("\u2298", "DISABLED"),
    M.NOT_RUN: ("\u00b7", "NOT RUN"),
    M.NO_RESULT: ("?", "NO RESULT"),
    M.MALFORMED: ("!", "MALFORMED"),
    M.NA: ("", "\u2014"),
}
LEGEND = {
    M.PASS: "passed",
    M.FAIL: "click for message and rank logs",
    M.KNOWN_BUG: "fails from a known torch bug (issue shown)",
    M.FLAKY: "failed in some runs",
    M.DISABLED: "tagged disabled (reason shown)",
    M.NOT_RUN: "does not apply here (reason shown), or target without result",
    M.SKIPPED: "skipped by the test",
    M.NO_RESULT: "test.xml missing",
    M.MALFORMED: "test.xml unreadable",
    M.NA: "no such target or case",
}
CSS_CLASS = {s: "st-" + s.replace(" ", "-").replace("/", "") for s in LABELS}

CSS = """
:root { --pass:#d9f2df; --pass-fg:#125c2a; --fail:#f9d0cc; --fail-fg:#8c1111;
  --flaky:#ffe0b3; --flaky-fg:#7a4200; --dis:#e6e1f3; --dis-fg:#4b3a7a;
  --nr:#f1f1f1; --nr-fg:#6b6b6b; --skip:#fbf3c8; --skip-fg:#6a5a00;
  --known:#f4d3ea; --known-fg:#7d1457;
  --prob:#ffd8a8; --prob-fg:#803b00; --line:#d4d4d4; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto,
  "DejaVu Sans", sans-serif; margin: 20px 28px; color: #1d1d1d; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line);
  padding-bottom: 3px; }
code, pre, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace;
  font-size: 12px; }
.sub { color: #555; margin-bottom: 10px; }
.summary { display: flex; gap: 8px; flex-wrap: wrap; margin: 10px 0 4px; }
.badge { border-radius: 4px; padding: 4px 10px; font-weight: 600;
  border: 1px solid rgba(0,0,0,.12); }
.badge b { font-size: 17px; margin-right: 4px; }
table { border-collapse: collapse; }
table.env td, table.env th { border: 1px solid var(--line); padding: 4px 8px;
  text-align: left; vertical-align: top; }
table.env th { background: #f6f6f6; }
.torch { font-weight: 700; }
table.matrix { border: 1px solid #bdbdbd; }
table.matrix th, table.matrix td { border: 1px solid var(--line);
  padding: 3px 8px; }
table.matrix thead th { background: #f3f4f6; position: sticky; top: 0;
  z-index: 1; }
table.matrix thead tr.dev th { font-size: 14px; border-left: 2px solid #999; }
table.matrix thead tr.dev th small { display: block; font-weight: 400;
  color: #555; font-size: 11px; }
table.matrix thead tr.api th { font-size: 12px; font-weight: 600; }
table.matrix .first { border-left: 2px solid #999; }
th.rowhead { text-align: left; font-weight: 400; white-space: nowrap;
  padding-left: 22px; }
tr.group th { text-align: left; background: #e9ecf1; padding: 5px 8px;
  font-size: 14px; }
tr.group th .labels { font-weight: 400; color: #555; font-size: 11px;
  margin-left: 10px; }
tr.group td { background: #e9ecf1; }
td.cell { text-align: center; width: 128px; min-width: 128px; font-size: 12px;
  white-space: nowrap; }
td.cell .lbl { font-weight: 700; letter-spacing: .02em; }
td.cell .dur { display: block; font-size: 11px; opacity: .8; }
td.cell .why { display: block; white-space: normal; font-size: 11px;
  max-width: 180px; margin: 0 auto; }
td.cell a { color: inherit; }
.st-pass { background: var(--pass); color: var(--pass-fg); }
.st-fail { background: var(--fail); color: var(--fail-fg); }
.st-known-bug { background: var(--known); color: var(--known-fg); }
.st-flaky { background: var(--flaky); color: var(--flaky-fg); }
.st-skipped { background: var(--skip); color: var(--skip-fg); }
.st-disabled { background: repeating-linear-gradient(135deg, var(--dis),
  var(--dis) 6px, #f1eef9 6px, #f1eef9 12px); color: var(--dis-fg); }
.st-not-run { background: var(--nr); color: var(--nr-fg); }
.st-no-result, .st-malformed { background: var(--prob); color: var(--prob-fg); }
.st-na { background: #fff; color: #aaa; }
td.st-fail, td.st-known-bug, td.st-no-result, td.st-malformed, td.st-flaky {
  outline: 2px solid currentColor; outline-offset: -3px; }
.legend { margin: 8px 0 10px; font-size: 12px; display: flex; gap: 6px;
  flex-wrap: wrap; }
.legend span { padding: 1px 8px; border-radius: 3px;
  border: 1px solid rgba(0,0,0,.1); }
section.detail { border: 1px solid var(--line); border-left: 5px solid
  var(--fail-fg); padding: 8px 12px; margin: 12px 0; border-radius: 3px; }
section.detail:target { box-shadow: 0 0 0 3px #f5b04a; }
section.detail h3 { margin: 0 0 4px; font-size: 15px; }
section.detail .meta { color: #555; font-size: 12px; margin-bottom: 6px; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: 8px;
  overflow: auto; max-height: 480px; margin: 4px 0; white-space: pre-wrap;
  word-break: break-word; }
div.bug { background: var(--known); color: var(--known-fg); padding: 6px 10px;
  border-radius: 3px; margin: 4px 0; }
div.bug a { color: inherit; }
pre.msg { background: #fff4f3; border-color: #f0c4bf; max-height: 200px; }
details summary { cursor: pointer; margin: 4px 0; font-weight: 600; }
ul.problems li, ul.plain li { margin: 2px 0; }
.back { font-size: 12px; float: right; }
footer { margin-top: 30px; color: #777; font-size: 12px; }
"""


def esc(s) -> str:
    """`s` escaped for HTML text and attributes (None as empty)."""
    return html.escape("" if s is None else str(s), quote=True)


def fmt_duration(sec: Optional[float]) -> str:
    """A duration in seconds as a short string (1.23s, 12.3s, 2m05s)."""
    if sec is None:
        return ""
    if sec < 10:
        return "%.2fs" % sec
    if sec < 60:
        return "%.1fs" % sec
    return "%dm%02ds" % (sec // 60, sec % 60)


def _short(text: str, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def column_heading(api: str) -> str:
    """The heading of an API column."""
    return api or "all APIs"


def device_caption(report: M.Report, dev: str) -> str:
    """A device column's caption: its hardware and count, from the environments."""
    envs = report.environments.get(dev) or []
    bits = []
    for env, _ in envs[:2]:
        names = [n for n in env.get("device_names") or [] if n != dev]
        count = env.get("device_count")
        if names:
            first = names[0]
            n = count if isinstance(count, int) else len(names)
            bits.append("%s\u00d7 %s" % (n, first) if n and n > 1 else first)
        elif count:
            bits.append("%s device(s)" % count)
    return "; ".join(bits)


def _cell_html(cell: M.Cell, row: M.Row, dev: str, api: str, first: bool) -> str:
    cls = ["cell", CSS_CLASS[cell.status]]
    if first:
        cls.append("first")
    sym, word = LABELS[cell.status]
    runs = len(cell.results)
    tooltip = "%s %s \u2014 %s%s: %s" % (
        row.behaviour,
        row.method,
        dev,
        " " + api if api and row.api_split else "",
        word,
    )
    if cell.message:
        tooltip += "\n" + _short(cell.message, 400)
    for note in cell.notes:
        tooltip += "\n" + note
    label = "%s %s" % (sym, word) if sym else word
    if cell.status == M.FLAKY:
        failed = sum(1 for r in cell.results if r.status == M.FAIL)
        label += " %d/%d" % (failed, runs)
    elif runs > 1 and cell.status in (M.PASS, M.FAIL):
        label += " \u00d7%d" % runs
    inner = '<span class="lbl">%s</span>' % esc(label)
    if cell.link:
        inner = '<a href="#%s">%s</a>' % (cell.link, inner)
    extra = ""
    if cell.status == M.DISABLED or (cell.status == M.NOT_RUN and cell.results):
        extra = '<span class="why">%s</span>' % esc(_short(cell.reason, 90))
    elif cell.status == M.KNOWN_BUG:
        bug = next((r.known_bug for r in cell.results if r.known_bug), None)
        why = "%s: %s" % (bug.get("issue", "?"), bug.get("summary", "")) if bug else cell.message
        extra = '<span class="why">%s</span>' % esc(_short(why, 48))
        if bug and bug.get("affected"):
            # The releases it affects, whole: the one thing a release column must show.
            extra += '<span class="why">torch %s</span>' % esc(bug["affected"])
    elif cell.status in (M.FAIL, M.FLAKY, M.NO_RESULT, M.MALFORMED):
        extra = '<span class="why">%s</span>' % esc(_short(cell.message, 48))
    dur = fmt_duration(cell.duration)
    if dur and cell.status not in (M.NOT_RUN, M.DISABLED, M.NA, M.SKIPPED):
        extra += '<span class="dur">%s</span>' % esc(dur)
    span = ' colspan="%d"' % cell.span if cell.span > 1 else ""
    return '<td class="%s"%s title="%s">%s%s</td>' % (
        " ".join(cls),
        span,
        esc(tooltip),
        inner,
        extra,
    )


def _matrix(report: M.Report) -> List[str]:
    api_cols = report.apis or [""]
    out = [
        '<table class="matrix">',
        "<thead>",
        '<tr class="dev">',
        '<th rowspan="2" style="text-align:left">behaviour / test</th>',
    ]
    for dev in report.devices:
        cap = device_caption(report, dev)
        out.append(
            '<th colspan="%d">%s%s</th>'
            % (len(api_cols), esc(dev), "<small>%s</small>" % esc(cap) if cap else "")
        )
    out.append("</tr>")
    out.append('<tr class="api">')
    for _ in report.devices:
        for i, api in enumerate(api_cols):
            out.append(
                "<th%s>%s</th>" % (' class="first"' if i == 0 else "", esc(column_heading(api)))
            )
    out.append("</tr></thead><tbody>")
    ncols = len(report.devices) * len(api_cols)
    for g in report.groups:
        out.append(
            '<tr class="group"><th colspan="%d">%s<span class="labels mono">'
            "%s</span></th></tr>" % (ncols + 1, esc(g.behaviour), esc("  ".join(g.labels)))
        )
        for row in g.rows:
            out.append('<tr><th class="rowhead mono">%s</th>' % esc(row.method))
            for dev in report.devices:
                for i, api in enumerate(api_cols):
                    cell = row.cells.get((dev, api))
                    if cell is None:
                        continue  # covered by a spanning cell
                    out.append(_cell_html(cell, row, dev, api, i == 0))
            out.append("</tr>")
    out.append("</tbody></table>")
    return out


def _environment(report: M.Report) -> List[str]:
    out = [
        '<table class="env"><tr><th>device</th><th>torch</th>'
        "<th>hardware</th><th>count</th><th>backend</th><th>world size</th>"
        "<th>python</th></tr>"
    ]
    for dev in report.devices:
        envs = report.environments.get(dev)
        if not envs:
            why = model.missing_environment_reason(report, dev)
            out.append(
                '<tr><td class="mono">%s</td><td colspan="6" style="color:#777">'
                "%s</td></tr>" % (esc(dev), why)
            )
            continue
        for env, sources in envs:
            hw = model.hardware_summary(env)
            py = str(env.get("python", "")).split()[0] if env.get("python") else ""
            out.append(
                '<tr><td class="mono">%s</td><td class="torch mono">%s</td><td>%s</td>'
                "<td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>"
                % (
                    esc(dev),
                    esc(env.get("torch_version", "?")),
                    esc(hw),
                    esc(env.get("device_count", "")),
                    esc(env.get("backend", "")),
                    esc(model.environment_world_sizes(env)),
                    esc(py),
                )
            )
    out.append("</table>")
    if len({e.get("torch_version") for envs in report.environments.values() for e, _ in envs}) > 1:
        out.append("<p><b>Note:</b> results come from different torch builds.</p>")
    return out


def _known_bug(bug: dict) -> str:
    """The box naming a result's known torch bug, with a link to the issue."""
    issue = esc(bug.get("issue", "?"))
    url = M.issue_url(bug.get("issue", ""))
    if url:
        issue = '<a href="%s">%s</a>' % (esc(url), issue)
    return (
        '<div class="bug"><b>Known torch bug %s</b>: %s<br>%s'
        " \u00b7 this run: torch %s, %s</div>"
        % (
            issue,
            esc(bug.get("summary", "")),
            esc(M.bug_scope(bug)),
            esc(bug.get("torch_version") or bug.get("torch", "?")),
            esc(bug.get("outcome", "?")),
        )
    )


def _detail(r: M.TestResult, report: M.Report) -> List[str]:
    sym, word = LABELS[r.status]
    api = (" \u00b7 " + r.api) if r.api else ""
    title = "%s %s \u2014 %s \u203a %s \u2014 %s%s" % (
        sym,
        word,
        r.behaviour,
        r.method or M.WHOLE_TARGET,
        r.device,
        api,
    )
    meta = [esc(r.where)]
    if r.test_id:
        meta.append("<code>%s</code>" % esc(r.test_id))
    if r.duration is not None:
        meta.append(esc(fmt_duration(r.duration)))
    meta.append("from <code>%s</code>" % esc(r.source))
    if r.log_path:
        meta.append("log <code>%s</code>" % esc(r.log_path))
    out = [
        '<section class="detail" id="%s">' % r.anchor,
        '<a class="back" href="#matrix">\u2191 matrix</a>',
        "<h3>%s</h3>" % esc(title),
        '<div class="meta">%s</div>' % " \u00b7 ".join(meta),
    ]
    if r.known_bug:
        out.append(_known_bug(r.known_bug))
    if r.message and not (r.known_bug and r.message.strip() == M.describe_known_bug(r.known_bug)):
        out.append('<pre class="msg">%s</pre>' % esc(r.message))
    if r.text and r.text.strip() != r.message.strip():
        what = "Traceback" if r.method else "Log"
        out.append(
            "<details open><summary>%s</summary><pre>%s</pre></details>" % (what, esc(r.text))
        )
    if r.rank_logs:
        for name, text in r.rank_logs:
            n = text.count("\n")
            out.append(
                "<details><summary>%s log (%d lines)</summary><pre>%s</pre>"
                "</details>" % (esc(name), n, esc(text))
            )
    elif r.method is not None and r.status == M.FAIL and r.label.startswith("//"):
        out.append('<div class="meta">No rank log output for this test in test.outputs.</div>')
    out.append("</section>")
    return out


def render(report: M.Report, generated: str = "") -> str:
    """The report as one self-contained HTML page."""
    c = report.counts
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>FSDP conformance report</title>",
        "<style>%s</style></head><body>" % CSS,
        "<h1>FSDP conformance report</h1>",
    ]
    torch = sorted(
        {str(e.get("torch_version")) for envs in report.environments.values() for e, _ in envs}
    )
    sub = []
    if torch:
        sub.append('torch <b class="mono">%s</b>' % esc(", ".join(torch)))
    if report.devices:
        sub.append(
            "devices: %s"
            % esc(
                ", ".join(
                    d + (" (%s)" % device_caption(report, d) if device_caption(report, d) else "")
                    for d in report.devices
                )
            )
        )
    if generated:
        sub.append("generated %s" % esc(generated))
    out.append('<div class="sub">%s</div>' % " \u00b7 ".join(sub))
    out.append('<div class="summary">')
    known = c.get(M.KNOWN_BUG, 0)
    for status, word in (
        (M.PASS, "passed"),
        (M.FAIL, "failed"),
        (M.KNOWN_BUG, "known torch bug" if known == 1 else "known torch bugs"),
        (M.FLAKY, "flaky"),
        (M.DISABLED, "disabled"),
        (M.NOT_RUN, "not run"),
        (M.SKIPPED, "skipped"),
        (M.NO_RESULT, "no result"),
        (M.MALFORMED, "malformed"),
    ):
        n = c.get(status, 0)
        if status == M.FAIL:
            n += known  # known torch bugs are failures too; named next
        elif status == M.KNOWN_BUG and n:
            word = "of these: " + word
        if n or status in (M.PASS, M.FAIL, M.DISABLED, M.NOT_RUN):
            out.append(
                '<span class="badge %s"><b>%d</b>%s</span>' % (CSS_CLASS[status], n, esc(word))
            )
    out.append("</div>")
    if report.problems:
        out.append(
            '<p><a href="#problems">%d problem(s) reading results</a></p>' % len(report.problems)
        )

    out.append('<h2 id="matrix">Results</h2>')
    out.append(
        '<div class="legend">'
        + "".join(
            '<span class="%s">%s</span>'
            % (
                CSS_CLASS[s],
                esc(
                    (("%s %s" % LABELS[s]).strip() if s != M.NA else "\u2014 n/a")
                    + " \u2014 "
                    + LEGEND[s]
                ),
            )
            for s in LEGEND
        )
        + "</div>"
    )
    if not report.groups:
        out.append("<p>No results found.</p>")
    else:
        out.extend(_matrix(report))

    out.append('<h2 id="environment">Environment</h2>')
    out.extend(_environment(report))

    if report.details:
        out.append('<h2 id="failures">Failures and missing results (%d)</h2>' % len(report.details))
        for r in report.details:
            out.extend(_detail(r, report))

    if report.disabled:
        out.append(
            '<h2 id="disabled">Disabled targets (%d)</h2><ul class="plain">' % len(report.disabled)
        )
        for t in report.disabled:
            out.append(
                "<li><code>%s</code> \u2014 %s</li>"
                % (esc(t.label), esc(t.reason or "no reason given"))
            )
        out.append("</ul>")

    out.append('<h2 id="problems">Problems reading results (%d)</h2>' % len(report.problems))
    if report.problems:
        out.append('<ul class="problems">')
        for p in report.problems:
            out.append("<li><code>%s</code>: %s</li>" % (esc(p.source), esc(p.message)))
        out.append("</ul>")
    else:
        out.append("<p>None.</p>")

    out.append('<h2>Inputs</h2><ul class="plain">')
    for i in report.inputs:
        out.append("<li><code>%s</code></li>" % esc(i))
    for n in report.notes:
        out.append("<li>%s</li>" % esc(n))
    out.append("</ul>")
    out.append(
        "<footer>%s \u00b7 written by tools/report/report.py</footer>" % esc(report.summary())
    )
    out.append("</body></html>")
    return "\n".join(out) + "\n"
