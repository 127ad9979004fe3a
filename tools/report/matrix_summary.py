#!/usr/bin/env python3
"""Prints the per-release table of a tools/matrix run (Markdown).

  python3 tools/report/matrix_summary.py OUT RELEASE...

Reads, for each RELEASE, ``OUT/<release>/times.tsv`` (written by tools/matrix:
release, torch version, Bazel's exit status, seconds to provide the environment,
seconds of ``bazel test``), ``OUT/<release>/bazel.log`` (Bazel's target counts)
and ``OUT/<release>/testlogs`` (the test cases, by outcome; expected failures are
the known torch bugs that applied and reproduced). Exits 2 when OUT is missing.
"""

import os
import re
import sys

if __package__ in (None, ""):
    # Run as a file: the report is the package tools.report, so the checkout root goes
    # first on the path instead of this directory.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.report import releases  # noqa: E402 (path set above)
from tools.report.testlogs import scan_testlogs  # noqa: E402

_EXECUTED = re.compile(r"Executed (\d+) out of (\d+) tests?: (.*)")


def _targets(log_path: str) -> str:
    """``"48 of 48 passed"``, or the failing count, from Bazel's last summary line."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return "?"
    passed = len(re.findall(r"^//\S+ +(?:\(cached\) )?PASSED", text, re.M))
    failed = len(re.findall(r"^//\S+ +(?:\(cached\) )?(?:FAILED|TIMEOUT|NO STATUS)", text, re.M))
    return "%d passed, %d failed" % (passed, failed)


def row(out: str, release: str) -> str:
    """One Markdown row of the table for ``release``."""
    folder = os.path.join(out, release)
    try:
        with open(os.path.join(folder, "times.tsv")) as f:
            _, version, status, env_s, test_s = f.read().split("\t")
    except (OSError, ValueError):
        return "| %s | (no run) | | | | | | | |" % release
    part = scan_testlogs(os.path.join(folder, "testlogs"))
    releases.tag(part)
    # The lock pins "2.10.0"; the run reports its build, "2.10.0+cu128".
    cases = [c for c in releases.counts(part) if c.torch.split("+")[0] == version.split("+")[0]]
    c = cases[0] if cases else releases.ReleaseCounts(version)
    return "| %s | %s | %s | %d | %d | %d | %s s | %s s | %s |" % (
        release,
        version,
        _targets(os.path.join(folder, "bazel.log")),
        c.passed,
        c.failed,
        c.expected_failures,
        env_s,
        test_s.strip(),
        "green" if status == "0" else "exit %s" % status,
    )


def main(argv) -> int:
    """Prints the table; returns the exit status."""
    if len(argv) < 2 or not os.path.isdir(argv[0]):
        print("matrix_summary.py: usage: matrix_summary.py OUT RELEASE...", file=sys.stderr)
        return 2
    out, names = argv[0], argv[1:]
    print(
        "| release | torch | targets | cases passed | cases failed | expected failures "
        "(known bugs) | environment | bazel test | result |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in names:
        print(row(out, name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
