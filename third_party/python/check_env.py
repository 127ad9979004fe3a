"""Checks that a Python interpreter can run the FSDP conformance suite.

Usage: python3 check_env.py [--quick]

Prints one line and exits 0 when torch >= MIN_TORCH, absl-py and pytest are present;
otherwise prints one line naming what is missing and exits 1. --quick looks the
packages up without importing them (tens of milliseconds instead of seconds); the
full check also imports them, which catches broken installs.
"""

import importlib
import importlib.metadata
import importlib.util
import re
import sys

MIN_TORCH = (2, 6)
# (import name, distribution name)
REQUIRED = (("torch", "torch"), ("absl", "absl-py"), ("pytest", "pytest"))


def _problem(quick):
    for module, dist in REQUIRED:
        try:
            if quick:
                if importlib.util.find_spec(module) is None:
                    raise ImportError("No module named %r" % module)
            else:
                importlib.import_module(module)
        except Exception as e:
            return "%s is not importable (%s)" % (module if module != "absl" else "absl-py", e)
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        version = sys.modules["torch"].__version__ if "torch" in sys.modules else "unknown"
    match = re.match(r"(\d+)\.(\d+)", version)
    if not match or tuple(int(x) for x in match.groups()) < MIN_TORCH:
        return "torch %s is too old (need %d.%d or newer)" % ((version,) + MIN_TORCH)
    return None


def main():
    """Prints what is missing (returns 1) or the installed versions (returns 0)."""
    quick = "--quick" in sys.argv[1:]
    problem = _problem(quick)
    if problem:
        print(problem)
        return 1
    versions = ["python=%d.%d.%d" % sys.version_info[:3]]
    for _, dist in REQUIRED:
        try:
            versions.append("%s=%s" % (dist, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            versions.append("%s=unknown" % dist)
    print(" ".join(versions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
