#!/usr/bin/env python3
"""The tree's own style rules, which ruff and buildifier lack; tools/lint runs them.

    tools/lint_rules.py FILE...

  module-size    a Python module over MAX_MODULE_LINES lines;
  function-size  a Python function or method over MAX_FUNCTION_LINES lines, from its
                 `def` to its last line (a nested function counts on its own too);
  tracker-ref    a comment or docstring of a Python, BUILD or .bzl file that cites this
                 project's tracker: "issue N", "issues N and M", "#N" (N a number).
                 References to other projects name them and stay allowed:
                 pytorch#N, bazel#N, owner/repo#N.

A file or function may exceed a size limit only when it is listed below with its
reason. Prints one `path:line: rule: message` line per finding. Exit status: 0 clean,
1 findings, 2 usage or an unreadable file.
"""

import ast
import io
import os
import re
import sys
import tokenize
from typing import Iterator, List, Tuple

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# Modules allowed over MAX_MODULE_LINES: path -> why.
LONG_MODULES = {}

# Functions allowed over MAX_FUNCTION_LINES: "path:Qualified.name" -> why. Tables (a
# literal list or dict that reads best in one piece) are the expected case.
LONG_FUNCTIONS = {}

# Offenders in files other work is changing at the time of writing: reported as
# "pending" on every run, without failing it, until they are split and removed here.
PENDING = {}

_ISSUE_WORD = re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)
# A bare "#N": no project name (letters, digits, "/", "-", "_", ".") right before it.
_BARE_NUMBER = re.compile(r"(?<![\w/.-])#\d+\b")

Finding = Tuple[str, int, str, str]  # path, line, rule, message

# Allow-list keys (LONG_MODULES, LONG_FUNCTIONS, PENDING) that matched an offender.
_USED = set()


def _is_python(path: str) -> bool:
    return path.endswith(".py")


def _is_starlark(path: str) -> bool:
    name = os.path.basename(path)
    return name in ("BUILD", "BUILD.bazel", "WORKSPACE", "WORKSPACE.bazel") or name.endswith(".bzl")


def _comments(source: str) -> Iterator[Tuple[int, str]]:
    """(line, text) of each comment; Starlark tokenizes as Python does."""
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                yield token.start[0], token.string
    except (tokenize.TokenError, SyntaxError):
        return


def _docstrings(tree: ast.AST) -> Iterator[Tuple[int, str]]:
    """(line, text) of each line of each module, class and function docstring."""
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            value = body[0].value.value
            if isinstance(value, str):
                for offset, line in enumerate(value.splitlines()):
                    yield body[0].lineno + offset, line


def tracker_refs(path: str, source: str, tree) -> List[Finding]:
    """Comments and docstrings of `source` that cite this project's tracker."""
    texts = list(_comments(source))
    if tree is not None:
        texts += list(_docstrings(tree))
    findings = []
    for line, text in sorted(texts):
        match = _ISSUE_WORD.search(text) or _BARE_NUMBER.search(text)
        if match:
            findings.append(
                (
                    path,
                    line,
                    "tracker-ref",
                    f"{match.group(0)!r} cites this project's tracker: say what it is about "
                    "instead (upstream references name their project, e.g. pytorch#123)",
                )
            )
    return findings


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[Tuple[str, ast.AST]]:
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, prefix + node.name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, prefix + node.name + ".")
        else:
            yield from _functions(node, prefix)


def sizes(path: str, source: str, tree: ast.AST) -> List[Finding]:
    """Modules and functions of `source` over the limits and not allowed by name."""
    findings = []
    lines = len(source.splitlines())
    allowed = (LONG_MODULES, PENDING)
    if lines > MAX_MODULE_LINES and any(path in a for a in allowed):
        _USED.add(path)
    elif lines > MAX_MODULE_LINES:
        findings.append(
            (path, 1, "module-size", f"{lines} lines (limit {MAX_MODULE_LINES}): split it")
        )
    for name, node in _functions(tree):
        length = node.end_lineno - node.lineno + 1
        key = f"{path}:{name}"
        if length > MAX_FUNCTION_LINES and (key in LONG_FUNCTIONS or key in PENDING):
            _USED.add(key)
        elif length > MAX_FUNCTION_LINES:
            findings.append(
                (
                    path,
                    node.lineno,
                    "function-size",
                    f"{name}: {length} lines (limit {MAX_FUNCTION_LINES}): break it up",
                )
            )
    return findings


def check(path: str) -> List[Finding]:
    """Every finding of the rules for one file."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    findings: List[Finding] = []
    tree = None
    if _is_python(path) or _is_starlark(path):
        try:
            tree = ast.parse(source, filename=path)
        except SyntaxError:
            tree = None  # ruff or buildifier reports it; comments are still checked.
        findings += tracker_refs(path, source, tree)
    if _is_python(path) and tree is not None:
        findings += sizes(path, source, tree)
    return findings


def main(argv: List[str]) -> int:
    """Checks the files named in `argv`; see the module docstring."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().split("\n\n")[0], file=sys.stderr)
        return 2
    findings: List[Finding] = []
    for path in argv:
        try:
            findings += check(path)
        except (OSError, UnicodeDecodeError) as e:
            print(f"lint_rules: cannot read {path}: {e}", file=sys.stderr)
            return 2
    checked = set(argv)
    for key in sorted({**LONG_MODULES, **LONG_FUNCTIONS, **PENDING}):
        if key.split(":")[0] in checked and key not in _USED:
            findings.append(
                (
                    key.split(":")[0],
                    1,
                    "stale-allowance",
                    f"{key} is within the limits now: remove it from tools/lint_rules.py",
                )
            )
    for path, line, rule, message in sorted(findings):
        print(f"{path}:{line}: {rule}: {message}")
    if PENDING:
        print(
            f"lint_rules: {len(PENDING)} size offenders pending (PENDING in tools/lint_rules.py)",
            file=sys.stderr,
        )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
