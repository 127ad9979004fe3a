#!/usr/bin/env python3
"""Writes the FSDP conformance report (report.html + report.md).

  python3 tools/report/report.py --testlogs bazel-testlogs --out report/

Merges any number of Bazel testlogs trees (--testlogs, repeatable) and pytest
JUnit files (--junit FILE:DEVICE) into one matrix of behaviour x device x FSDP
API; results from several torch versions (tools/matrix) get a column per device
and version.  Disabled targets come from `bazel query --output=xml` (--query_xml FILE,
or tools/bazel is run when present unless --no_bazel_query).

The HTML page needs Jinja2 (any Python with torch has it); run by an interpreter
without it, the script runs itself again under the suite's pinned environment
(tools/make_venv, built once as tools/bazel builds it).

Exits 0 whether or not tests failed; 2 on usage errors.
"""

import argparse
import datetime
import os
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rerun_with_jinja2() -> None:
    """Runs this script under the pinned environment, which has Jinja2; exits with it."""
    try:
        venv = subprocess.run(
            [
                os.path.join(_ROOT, "tools", "make_venv"),
                os.path.join(_ROOT, "third_party", "requirements.lock"),
                "venv",
                "the pinned Python env (torch and friends)",
            ],
            stdout=subprocess.PIPE,
            check=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        print(
            "report.py: needs Jinja2, which %s lacks, and the pinned environment could not "
            "be built (%s): run it with a Python that has torch, or pip install jinja2"
            % (sys.executable, e),
            file=sys.stderr,
        )
        sys.exit(2)
    python = os.path.join(venv, "bin", "python3")
    os.execv(python, [python, os.path.abspath(__file__)] + sys.argv[1:])


if __package__ in (None, ""):
    # Run as a file (python3 tools/report/report.py, or Bazel's py_binary): the report is
    # the package tools.report, so the checkout (or runfiles) root goes first on the path
    # instead of this directory.
    sys.path[0] = _ROOT
    try:
        import jinja2  # noqa: F401 (render_html's template engine)
    except ImportError:
        _rerun_with_jinja2()

from tools.report import releases, render_html, render_md  # noqa: E402 (path set above)
from tools.report.collected import Collected, only_devices  # noqa: E402
from tools.report.files import read_text  # noqa: E402
from tools.report.matrix import build_report  # noqa: E402
from tools.report.pytest_junit import parse_pytest_junit  # noqa: E402
from tools.report.query import parse_query_xml, run_bazel_query  # noqa: E402
from tools.report.testlogs import drop_stale, scan_testlogs  # noqa: E402


def _workspace() -> str:
    """Where relative paths and tools/bazel are looked up."""
    ws = os.environ.get("BUILD_WORKSPACE_DIRECTORY")  # set by `bazel run`
    if ws:
        return ws
    if os.path.exists(os.path.join(os.getcwd(), "tools", "bazel")):
        return os.getcwd()
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    if os.path.exists(os.path.join(root, "tools", "bazel")):
        return root
    return os.getcwd()


def parse_args(argv):
    """Parses report.py's command line."""
    p = argparse.ArgumentParser(
        prog="report.py", description="Write an HTML + Markdown FSDP conformance report."
    )
    p.add_argument(
        "--testlogs",
        action="append",
        default=[],
        metavar="DIR",
        help="bazel-testlogs directory (repeatable; default bazel-testlogs if it exists)",
    )
    p.add_argument(
        "--junit",
        action="append",
        default=[],
        metavar="FILE:DEVICE",
        help="pytest JUnit XML and the device it ran on (repeatable)",
    )
    p.add_argument(
        "--query_xml",
        metavar="FILE",
        help="output of: bazel query --output=xml 'tests(//fsdp/...)'",
    )
    p.add_argument(
        "--no_bazel_query",
        action="store_true",
        help="do not run tools/bazel query when --query_xml is absent",
    )
    p.add_argument(
        "--package", default="fsdp", help="Bazel package whose tests are reported (default fsdp)"
    )
    p.add_argument(
        "--devices",
        metavar="LIST",
        help="comma-separated device columns to show, e.g. cpu,cuda "
        "(default: every device with a target or a result)",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="directory for report.html and report.md"
    )
    return p.parse_args(argv)


def _inputs(args, resolve):
    """(testlogs dirs, [(JUnit path, device)]) from the arguments, or an error line."""
    testlogs = list(args.testlogs)
    if not testlogs and not args.junit:
        if not os.path.isdir(resolve("bazel-testlogs")):
            return None, "no --testlogs or --junit given and no bazel-testlogs here"
        testlogs = ["bazel-testlogs"]
    junits = []
    for spec in args.junit:
        path, sep, device = spec.rpartition(":")
        if not sep or not path or not device:
            return None, "--junit wants FILE:DEVICE, got %r" % spec
        junits.append((resolve(path), device))
    for d in testlogs:
        if not os.path.isdir(resolve(d)):
            return None, "--testlogs %s is not a directory" % d
    if args.query_xml and not os.path.isfile(resolve(args.query_xml)):
        return None, "--query_xml %s not found" % args.query_xml
    return (testlogs, junits), ""


def _collect(args, ws, resolve, testlogs, junits) -> Collected:
    """Reads the target list, the testlogs trees and the JUnit files."""
    col = Collected()
    if args.query_xml:
        path = resolve(args.query_xml)
        col.merge(parse_query_xml(read_text(path), path, args.package))
    elif not args.no_bazel_query:
        text, what = run_bazel_query(ws, args.package)
        if text is None:
            col.notes.append(what)
        else:
            col.merge(parse_query_xml(text, what, args.package))
    else:
        col.notes.append("no target list (--query_xml); disabled targets are not shown")
    for d in testlogs:
        part = scan_testlogs(resolve(d), args.package, col.targets)
        releases.tag(part)
        col.merge(part)
    for path, device in junits:
        part = parse_pytest_junit(path, device, args.package)
        releases.tag(part)
        col.merge(part)
    col = drop_stale(col)
    if args.devices:
        col = only_devices(col, [d.strip() for d in args.devices.split(",") if d.strip()])
    return col


def main(argv=None) -> int:
    """Reads the inputs, writes the HTML and Markdown report; returns the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    ws = _workspace()

    def resolve(p):
        return p if os.path.isabs(p) else os.path.join(ws, p)

    inputs, error = _inputs(args, resolve)
    if inputs is None:
        print("report.py: " + error, file=sys.stderr)
        return 2
    col = _collect(args, ws, resolve, *inputs)
    # Results of several torch versions (tools/matrix): a column per device and version.
    versions = releases.split_columns(col)
    per_release = releases.counts(col) if versions else []
    report = build_report(col)
    releases.dedupe_disabled(report)
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out_dir = resolve(args.out)
    os.makedirs(out_dir, exist_ok=True)
    html_path = os.path.join(out_dir, "report.html")
    md_path = os.path.join(out_dir, "report.md")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(render_html.render(report, now))
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(render_md.render(report, now))
        if per_release:
            f.write("\n" + releases.markdown_table(per_release))
    print(html_path)
    print(md_path)
    print(report.summary())
    for row in per_release:
        print(row.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
