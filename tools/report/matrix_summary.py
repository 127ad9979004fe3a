#!/usr/bin/env python3
"""Prints the per-release table of a tools/matrix run (Markdown).

  python3 tools/report/matrix_summary.py OUT RELEASE...

Reads, for each RELEASE, ``OUT/<release>/times.tsv`` (written by tools/matrix:
release, torch version, Bazel's exit status, seconds to provide the environment,
seconds of ``bazel test``), ``OUT/<release>/bazel.log`` (the targets this run tested, by outcome)
and ``OUT/<release>/testlogs`` (the test cases of those targets, by outcome; expected
failures are the known torch bugs that applied and reproduced). Exits 2 when OUT is missing.
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

# Bazel's summary line per target; tools/matrix copies the testlogs of the same ones.
_OUTCOME = re.compile(r"^(//\S+) +(?:\(cached\) )?(PASSED|FAILED|FLAKY|TIMEOUT|NO STATUS)", re.M)
_FAILED = ("FAILED", "TIMEOUT", "NO STATUS")


def _run_targets(log_path: str):
    """{label: outcome} of the targets in Bazel's summary, or None without a log."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            return dict(_OUTCOME.findall(f.read()))
    except OSError:
        return None


def _targets(outcomes) -> str:
    """``"48 passed, 0 failed"``: the targets of this run by outcome."""
    if outcomes is None:
        return "?"
    passed = sum(1 for o in outcomes.values() if o == "PASSED")
    failed = sum(1 for o in outcomes.values() if o in _FAILED)
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
    outcomes = _run_targets(os.path.join(folder, "bazel.log"))
    if outcomes:
        # The release's output base keeps earlier runs' results (the default set, when
        # this run was --config=large): count the cases of this run's targets only.
        part.results = [r for r in part.results if r.label in outcomes]
    releases.tag(part)
    # The lock pins "2.10.0"; the run reports its build, "2.10.0+cu128".
    cases = [c for c in releases.counts(part) if c.torch.split("+")[0] == version.split("+")[0]]
    c = cases[0] if cases else releases.ReleaseCounts(version)
    return "| %s | %s | %s | %d | %d | %d | %s s | %s s | %s |" % (
        release,
        version,
        _targets(outcomes),
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
