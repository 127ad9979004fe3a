"""Machine-specific path prefixes in messages and logs, cut to what a reader needs.

A traceback from a Bazel sandbox names files under
``.../sandbox/<n>/execroot/<ws>/bazel-out/.../<target>.runfiles/<ws>/``, one from an
environment under ``.../lib/python3.X/site-packages/`` (the standard library under
``.../lib/python3.X/``), and one from pytest under the checkout's absolute path. None
of these prefixes says anything about the failure, and they differ between hosts and
runs, so the report shows paths relative to the repository, to ``site-packages`` and
to ``python3.X``.
"""

import re

# An absolute path starts the text or follows a quote, a space or a bracket, never
# another path's characters (``site-packages/torch/.../fsdp/x.py`` is not a checkout).
_START = r"(?<![^\s\"'(<>=])/"

# The repository root inside a target's runfiles tree, whatever sandbox holds it.
_RUNFILES_ROOT = re.compile(_START + r"[^\s\"'<>]*?/[^/\s\"'<>]+\.runfiles/[^/\s\"'<>]+/")
# A sandbox's execution root (and its output tree), for a path cut short before its
# runfiles root (the harness shortens long messages).
_EXECROOT_BIN = re.compile(
    _START + r"[^\s\"'<>]*?/execroot/[^/\s\"'<>]+/(?:bazel-out/[^/\s\"'<>]+/bin/)?"
)
# An interpreter's package directory, whichever environment or prefix holds it.
_PACKAGES_ROOT = re.compile(_START + r"[^\s\"'<>]*?/((?:site|dist)-packages)/")
# The standard library of whichever interpreter ran (pyenv, a venv's base, /usr).
_STDLIB_ROOT = re.compile(_START + r"[^\s\"'<>]*?/lib/(python3\.\d+)/")
# A checkout of this repository wherever it lies (pytest runs from one): the suite's
# Python lives in these top-level packages.
_CHECKOUT_ROOT = re.compile(_START + r"[^\s\"'<>]*?/((?:fsdp|testing|tools)/[^\s\"'<>]*?\.py)\b")


def shorten(text: str) -> str:
    """``text`` with runfiles and checkout roots removed, package roots cut to
    ``site-packages/`` and standard-library roots to ``python3.X/``."""
    if not text:
        return text
    text = _EXECROOT_BIN.sub("", _RUNFILES_ROOT.sub("", text))
    text = _PACKAGES_ROOT.sub(r"\1/", text)
    return _CHECKOUT_ROOT.sub(r"\1", _STDLIB_ROOT.sub(r"\1/", text))
