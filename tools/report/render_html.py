"""Renders a matrix.Report as one self-contained HTML page (inline CSS, no JS).

Every status has a text label as well as a colour, so the page reads the same
printed in black and white.  Cells that need explaining (failures, missing or
malformed results) link to a detail section with the message, traceback and
the failing test's part of each rank log.

The page is the Jinja2 template templates/report.html.j2 (with templates/report.css);
this module turns the report into the plain values the template lays out.
"""

import os
from typing import Dict, List

import jinja2

from tools.report.cells import Cell
from tools.report.collected import TestResult
from tools.report.known_bugs import bug_scope, describe_known_bug, issue_url
from tools.report.matrix import WHOLE_TARGET, Report, Row
from tools.report import presentation
from tools.report import status as st

_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")

LABELS = {
    st.PASS: ("\u2714", "PASS"),
    st.FAIL: ("\u2718", "FAIL"),
    st.KNOWN_BUG: ("\u2691", "KNOWN BUG"),
    st.FLAKY: ("\u2248", "FLAKY"),
    st.SKIPPED: ("\u21b7", "SKIPPED"),
    st.DISABLED: ("\u2298", "DISABLED"),
    st.NOT_RUN: ("\u00b7", "NOT RUN"),
    st.NO_RESULT: ("?", "NO RESULT"),
    st.MALFORMED: ("!", "MALFORMED"),
    st.NA: ("", "\u2014"),
}
LEGEND = {
    st.PASS: "passed",
    st.FAIL: "click for message and rank logs",
    st.KNOWN_BUG: "fails from a known torch bug (issue shown)",
    st.FLAKY: "failed in some runs",
    st.DISABLED: "tagged disabled (reason shown)",
    st.NOT_RUN: "does not apply here (reason shown), or target without result",
    st.SKIPPED: "skipped by the test",
    st.NO_RESULT: "test.xml missing",
    st.MALFORMED: "test.xml unreadable",
    st.NA: "no such target or case",
}
CSS_CLASS = {s: "st-" + s.replace(" ", "-").replace("/", "") for s in LABELS}


def _cell_label(cell: Cell) -> str:
    """The cell's symbol and word, with its run counts."""
    sym, word = LABELS[cell.status]
    runs = len(cell.results)
    label = "%s %s" % (sym, word) if sym else word
    if cell.status == st.FLAKY:
        failed = sum(1 for r in cell.results if r.status == st.FAIL)
        label += " %d/%d" % (failed, runs)
    elif runs > 1 and cell.status in (st.PASS, st.FAIL):
        label += " \u00d7%d" % runs
    return label


def _cell_whys(cell: Cell) -> List[str]:
    """The short explanations under a cell's label."""
    if cell.reason and cell.status in (st.DISABLED, st.NOT_RUN):
        return [presentation.shorten(cell.reason, 90)]
    if cell.status == st.KNOWN_BUG:
        bug = next((r.known_bug for r in cell.results if r.known_bug), None)
        why = "%s: %s" % (bug.get("issue", "?"), bug.get("summary", "")) if bug else cell.message
        whys = [presentation.shorten(why, 48)]
        if bug and bug.get("affected"):
            # The releases it affects, whole: the one thing a release column must show.
            whys.append("torch %s" % bug["affected"])
        return whys
    if cell.status in (st.FAIL, st.FLAKY, st.NO_RESULT, st.MALFORMED):
        return [presentation.shorten(cell.message, 48)]
    return []


def _cell(cell: Cell, row: Row, dev: str, api: str, first: bool) -> Dict:
    """What the template shows of one cell."""
    css = ["cell", CSS_CLASS[cell.status]] + (["first"] if first else [])
    title = "%s %s \u2014 %s%s: %s" % (
        row.behaviour,
        row.method,
        dev,
        " " + api if api and row.api_split else "",
        LABELS[cell.status][1],
    )
    if cell.message:
        title += "\n" + presentation.shorten(cell.message, 400)
    for note in cell.notes:
        title += "\n" + note
    duration = presentation.fmt_duration(cell.duration)
    if cell.status in (st.NOT_RUN, st.DISABLED, st.NA, st.SKIPPED):
        duration = ""
    return {
        "css": " ".join(css),
        "span": cell.span,
        "title": title,
        "label": _cell_label(cell),
        "link": cell.link,
        "whys": _cell_whys(cell),
        "duration": duration,
    }


def _matrix(report: Report) -> Dict:
    """The matrix's headings and rows of cells (spanned cells left out)."""
    api_cols = report.apis or [""]
    groups = []
    for g in report.groups:
        rows = []
        for row in g.rows:
            cells = [
                _cell(row.cells[(dev, api)], row, dev, api, i == 0)
                for dev in report.devices
                for i, api in enumerate(api_cols)
                if (dev, api) in row.cells
            ]
            rows.append({"method": row.method, "cells": cells})
        groups.append({"behaviour": g.behaviour, "labels": "  ".join(g.labels), "rows": rows})
    return {
        "devices": [
            {"name": d, "caption": presentation.device_caption(report, d)} for d in report.devices
        ],
        "api_headings": [presentation.column_heading(api) for api in api_cols],
        "columns": len(report.devices) * len(api_cols),
        "groups": groups,
    }


def _environments(report: Report) -> List[Dict]:
    """One row per device environment, or the reason a device has none."""
    rows = []
    for dev in report.devices:
        envs = report.environments.get(dev)
        if not envs:
            rows.append(
                {"device": dev, "missing": presentation.missing_environment_reason(report, dev)}
            )
            continue
        for env, _ in envs:
            rows.append(
                {
                    "device": dev,
                    "missing": "",
                    "torch": env.get("torch_version", "?"),
                    "hardware": presentation.hardware_summary(env),
                    "count": env.get("device_count", ""),
                    "backend": env.get("backend", ""),
                    "world_sizes": presentation.environment_world_sizes(env),
                    "python": str(env.get("python", "")).split()[0] if env.get("python") else "",
                }
            )
    return rows


def _bug(bug: dict) -> Dict:
    """The box naming a result's known torch bug, with a link to the issue."""
    return {
        "issue": bug.get("issue", "?"),
        "url": issue_url(bug.get("issue", "")),
        "summary": bug.get("summary", ""),
        "scope": bug_scope(bug),
        "torch": bug.get("torch_version") or bug.get("torch", "?"),
        "outcome": bug.get("outcome", "?"),
    }


def _detail(r: TestResult) -> Dict:
    """A failing or missing result's section: message, traceback, rank logs."""
    sym, word = LABELS[r.status]
    api = (" \u00b7 " + r.api) if r.api else ""
    message = r.message
    if r.known_bug and message.strip() == describe_known_bug(r.known_bug):
        message = ""  # The bug's box says it.
    return {
        "anchor": r.anchor,
        "title": "%s %s \u2014 %s \u203a %s \u2014 %s%s"
        % (sym, word, r.behaviour, r.method or WHOLE_TARGET, r.device, api),
        "where": r.where,
        "test_id": r.test_id,
        "duration": presentation.fmt_duration(r.duration) if r.duration is not None else "",
        "source": r.source,
        "log_path": r.log_path,
        "bug": _bug(r.known_bug) if r.known_bug else None,
        "message": message,
        "text": r.text if r.text and r.text.strip() != r.message.strip() else "",
        "text_kind": "Traceback" if r.method else "Log",
        "rank_logs": [{"name": n, "lines": t.count("\n"), "text": t} for n, t in r.rank_logs],
        "no_rank_logs": not r.rank_logs
        and r.method is not None
        and r.status == st.FAIL
        and r.label.startswith("//"),
    }


_SUMMARY = (
    (st.PASS, "passed"),
    (st.FAIL, "failed"),
    (st.KNOWN_BUG, "known torch bug"),
    (st.FLAKY, "flaky"),
    (st.DISABLED, "disabled"),
    (st.NOT_RUN, "not run"),
    (st.SKIPPED, "skipped"),
    (st.NO_RESULT, "no result"),
    (st.MALFORMED, "malformed"),
)


def _badges(report: Report) -> List[Dict]:
    """The summary's counts; known torch bugs are failures too, named next."""
    counts, known = report.counts, report.counts.get(st.KNOWN_BUG, 0)
    badges = []
    for status, word in _SUMMARY:
        n = counts.get(status, 0)
        if status == st.FAIL:
            n += known
        elif status == st.KNOWN_BUG:
            word = word if known == 1 else word + "s"
            if n:
                word = "of these: " + word
        if n or status in (st.PASS, st.FAIL, st.DISABLED, st.NOT_RUN):
            badges.append({"css": CSS_CLASS[status], "count": n, "word": word})
    return badges


def _legend() -> List[Dict]:
    return [
        {
            "css": CSS_CLASS[s],
            "text": (("%s %s" % LABELS[s]).strip() if s != st.NA else "\u2014 n/a")
            + " \u2014 "
            + LEGEND[s],
        }
        for s in LEGEND
    ]


def render(report: Report, generated: str = "") -> str:
    """The report as one self-contained HTML page."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    torch = sorted(
        {str(e.get("torch_version")) for envs in report.environments.values() for e, _ in envs}
    )
    devices = ", ".join(
        d
        + (
            " (%s)" % presentation.device_caption(report, d)
            if presentation.device_caption(report, d)
            else ""
        )
        for d in report.devices
    )
    mixed = {e.get("torch_version") for envs in report.environments.values() for e, _ in envs}
    return env.get_template("report.html.j2").render(
        report=report,
        torch=", ".join(torch),
        devices=devices,
        generated=generated,
        badges=_badges(report),
        legend=_legend(),
        matrix=_matrix(report),
        environments=_environments(report),
        mixed_torch=len(mixed) > 1,
        details=[_detail(r) for r in report.details],
    )
