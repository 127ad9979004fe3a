#!/usr/bin/env python3
"""Writes the FSDP conformance report (report.html + report.md).

  python3 tools/report/report.py --testlogs bazel-testlogs --out report/

Merges any number of Bazel testlogs trees (--testlogs, repeatable) and pytest
JUnit files (--junit FILE:DEVICE) into one matrix of behaviour x device x FSDP
API; results from several torch versions (tools/matrix) get a column per device
and version.  Disabled targets come from `bazel query --output=xml` (--query_xml FILE,
or tools/bazel is run when present unless --no_bazel_query).

Exits 0 whether or not tests failed; 2 on usage errors.
"""

import argparse
import datetime
import os
import sys

if __package__ in (None, ""):
    # Run as a file (python3 tools/report/report.py, or Bazel's py_binary): the report is
    # the package tools.report, so the checkout (or runfiles) root goes first on the path
    # instead of this directory.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.report import collect, model, releases, render_html, render_md  # noqa: E402 (path set above)


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


def main(argv=None) -> int:
    """Reads the inputs, writes the HTML and Markdown report; returns the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    ws = _workspace()

    def resolve(p):
        return p if os.path.isabs(p) else os.path.join(ws, p)

    testlogs = list(args.testlogs)
    if not testlogs and not args.junit:
        if os.path.isdir(resolve("bazel-testlogs")):
            testlogs = ["bazel-testlogs"]
        else:
            print(
                "report.py: no --testlogs or --junit given and no bazel-testlogs here",
                file=sys.stderr,
            )
            return 2
    junits = []
    for spec in args.junit:
        path, sep, device = spec.rpartition(":")
        if not sep or not path or not device:
            print("report.py: --junit wants FILE:DEVICE, got %r" % spec, file=sys.stderr)
            return 2
        junits.append((resolve(path), device))
    for d in testlogs:
        if not os.path.isdir(resolve(d)):
            print("report.py: --testlogs %s is not a directory" % d, file=sys.stderr)
            return 2
    if args.query_xml and not os.path.isfile(resolve(args.query_xml)):
        print("report.py: --query_xml %s not found" % args.query_xml, file=sys.stderr)
        return 2

    col = model.Collected()
    if args.query_xml:
        path = resolve(args.query_xml)
        col.merge(collect.parse_query_xml(collect._read_text(path), path, args.package))
    elif not args.no_bazel_query:
        text, what = collect.run_bazel_query(ws, args.package)
        if text is None:
            col.notes.append(what)
        else:
            col.merge(collect.parse_query_xml(text, what, args.package))
    else:
        col.notes.append("no target list (--query_xml); disabled targets are not shown")
    for d in testlogs:
        part = collect.scan_testlogs(resolve(d), args.package, col.targets)
        releases.tag(part)
        col.merge(part)
    for path, device in junits:
        part = collect.parse_pytest_junit(path, device, args.package)
        releases.tag(part)
        col.merge(part)
    col = collect.drop_stale(col)

    if args.devices:
        col = model.only_devices(col, [d.strip() for d in args.devices.split(",") if d.strip()])
    # Results of several torch versions (tools/matrix): a column per device and version.
    versions = releases.split_columns(col)
    per_release = releases.counts(col) if versions else []
    report = model.build_report(col)
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
