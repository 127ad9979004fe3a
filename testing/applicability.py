"""Where a test applies: declared once, in the BUILD file's ``fsdp_test``.

Both runners read one declaration. Bazel's macro (``tools/defs.bzl``) turns it into
targets and passes the rules to the test binary as ``--applicability=<json>``;
the pytest path reads the same ``fsdp_test(...)`` call from BUILD with ``ast``
(:func:`read_build`). A declaration holds:

* ``world_sizes``: the sizes Bazel makes targets for, per device, and the sizes
  pytest runs by default. Without it, a device's defaults are
  :func:`default_world_sizes`, less those the rule below excludes.
* ``valid_world_sizes``: the sizes at which the file's checks hold, as a rule
  (``">=2: a replica all-reduce needs two ranks"``; see :func:`parse_rule`).
* ``cases``: method-level deviations, ``{method or fnmatch glob: {"world_sizes":
  rule, "disabled": {device: reason}}}``.
* ``disabled``: ``{device: reason}`` for a whole file.

A case outside its rules is *not run*, with the reason: never a pass, a failure
or a silent skip. This module imports only the standard library, so tools that
must not import torch can use it.
"""

import ast
import dataclasses
import functools
import fnmatch
import json
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple

# The rule every test has unless it declares one.
ANY = "any"
_TERM = re.compile(r"^(?:(>=|<=)?(\d+)|even|odd|any)$")


@dataclasses.dataclass(frozen=True)
class Rule:
    """A world-size rule: alternatives (any one suffices) and the reason for it.

    Attributes:
      text: the rule as written, e.g. ``">=2: needs a peer"``.
      terms: the alternatives: ``"any"``, ``"even"``, ``"odd"``, ``"N"``,
        ``">=N"`` or ``"<=N"``.
      reason: why sizes outside the rule cannot apply ("" for ``any``).
    """

    text: str
    terms: Tuple[str, ...]
    reason: str

    def allows(self, world_size: int) -> bool:
        """True when the checks hold at ``world_size``."""
        return any(_term_allows(term, world_size) for term in self.terms)

    def not_run_reason(self, world_size: int) -> Optional[str]:
        """Why ``world_size`` is outside this rule, or None when it is inside."""
        if self.allows(world_size):
            return None
        return f"valid at world size {', '.join(self.terms)}, not {world_size}: {self.reason}"


def _term_allows(term: str, world_size: int) -> bool:
    if term == "any":
        return True
    if term == "even":
        return world_size % 2 == 0
    if term == "odd":
        return world_size % 2 == 1
    if term.startswith(">="):
        return world_size >= int(term[2:])
    if term.startswith("<="):
        return world_size <= int(term[2:])
    return world_size == int(term)


def parse_rule(text: str) -> Rule:
    """Parses ``"TERMS: reason"``; raises ValueError naming what is wrong.

    TERMS are comma-separated alternatives: ``N``, ``>=N``, ``<=N``, ``even``,
    ``odd`` or ``any``. The reason is required unless the rule is ``any``.
    """
    head, sep, reason = text.partition(":")
    terms = tuple(t.strip() for t in head.split(",") if t.strip())
    if not terms or any(not _TERM.match(t) for t in terms):
        raise ValueError(
            f"world-size rule {text!r}: expected comma-separated N, >=N, <=N, even, odd or "
            "any, then ': reason'"
        )
    reason = reason.strip()
    if terms != (ANY,) and not (sep and reason):
        raise ValueError(f"world-size rule {text!r}: say why after a colon ('>=2: why')")
    return Rule(text=text, terms=terms, reason=reason)


def default_world_sizes(accelerator: bool) -> List[int]:
    """A device's world sizes when a test declares none (tools/defs.bzl agrees).

    Accelerators also run at 1, so a one-device host (the commonest GPU host)
    runs every test that holds there; CPU ranks cost no devices, and world size 1
    on CPU runs through ``--world-size=1`` under pytest.
    """
    return [1, 2] if accelerator else [2]


@dataclasses.dataclass(frozen=True)
class Declaration:
    """One ``fsdp_test``'s applicability (see the module docstring)."""

    valid: Rule = dataclasses.field(default_factory=lambda: parse_rule(ANY))
    cases: Mapping[str, Mapping[str, object]] = dataclasses.field(default_factory=dict)
    disabled: Mapping[str, str] = dataclasses.field(default_factory=dict)
    world_sizes: Optional[object] = None
    # The FSDP API the whole file exercises (fsdp_test's ``api``), for methods
    # whose name and parameters do not say it.
    api: Optional[str] = None

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, object]) -> "Declaration":
        """Builds it from ``fsdp_test``'s keyword arguments (or the macro's JSON)."""
        cases = dict(kwargs.get("cases") or {})
        for pattern, case in cases.items():
            unknown = set(case) - {"world_sizes", "disabled"}
            if unknown:
                raise ValueError(f"cases[{pattern!r}]: unknown keys {sorted(unknown)}")
            if "world_sizes" in case:
                parse_rule(case["world_sizes"])
        return cls(
            valid=parse_rule(kwargs.get("valid_world_sizes") or ANY),
            cases=cases,
            disabled=dict(kwargs.get("disabled") or {}),
            world_sizes=kwargs.get("world_sizes"),
            api=kwargs.get("api"),
        )

    @classmethod
    def from_json(cls, text: str) -> "Declaration":
        """Parses the ``--applicability`` value the Bazel macro passes."""
        return cls.from_kwargs(json.loads(text) if text else {})

    def world_sizes_for(self, device: str, accelerator: bool) -> List[int]:
        """The sizes Bazel makes targets for on ``device`` (and pytest's default)."""
        sizes = self.world_sizes
        if isinstance(sizes, Mapping):
            sizes = sizes.get(device)
        if sizes is None:
            return [ws for ws in default_world_sizes(accelerator) if self.valid.allows(ws)]
        return sorted(sizes)

    def not_run_reason(self, method: str, device: str, world_size: int) -> Optional[str]:
        """Why ``method`` cannot apply on ``device`` at ``world_size``, or None."""
        if device in self.disabled:
            return f"disabled on {device}: {self.disabled[device]}"
        reason = self.valid.not_run_reason(world_size)
        if reason:
            return reason
        for pattern, case in self.cases.items():
            if not fnmatch.fnmatchcase(method, pattern):
                continue
            disabled = case.get("disabled") or {}
            if device in disabled:
                return f"disabled on {device}: {disabled[device]}"
            if "world_sizes" in case:
                reason = parse_rule(case["world_sizes"]).not_run_reason(world_size)
                if reason:
                    return reason
        return None


def read_build(build_file: str) -> Dict[str, Dict[str, object]]:
    """Reads every ``fsdp_test(...)`` call of a BUILD file, without Bazel.

    Returns ``{name: keyword arguments}``. BUILD files are Python syntax and the
    arguments ``fsdp_test`` reads here are literals, or names of literals assigned
    at the top of the file (``_WORLD_SIZES = {...}``), so ``ast.literal_eval``
    reads them as Bazel does; anything else raises ValueError naming it.
    """
    with open(build_file) as f:
        tree = ast.parse(f.read(), filename=build_file)
    constants = _literal_constants(tree)
    found = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "fsdp_test"):
            continue
        kwargs = {}
        for keyword in node.keywords:
            value = keyword.value
            if isinstance(value, ast.Name) and value.id in constants:
                kwargs[keyword.arg] = constants[value.id]
                continue
            try:
                kwargs[keyword.arg] = ast.literal_eval(value)
            except ValueError:
                if keyword.arg in ("name", "world_sizes", "valid_world_sizes", "cases", "disabled"):
                    raise ValueError(
                        f"{build_file}:{value.lineno}: fsdp_test's {keyword.arg} must be "
                        "a literal, or a name assigned one at the top of the file, so that "
                        "pytest reads it as Bazel does"
                    ) from None
        found[kwargs["name"]] = kwargs
    return found


def _literal_constants(tree: ast.Module) -> Dict[str, object]:
    """``NAME = <literal>`` assignments at the top level of a BUILD file."""
    constants = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass  # not a literal: an fsdp_test that uses it gets the error above
    return constants


_ENV = "FSDP_TEST_APPLICABILITY"
_BY_FILE: Dict[str, Optional[Declaration]] = {}


def for_test_file(test_file: str) -> Optional[Declaration]:
    """The declaration the harness applies to a test of ``test_file``.

    Under Bazel the macro passes it in ``FSDP_TEST_APPLICABILITY``; elsewhere
    (pytest, a test file run by hand) it is read from the package's BUILD file.
    """
    if os.environ.get(_ENV):
        return _from_environment(os.environ[_ENV])
    if test_file not in _BY_FILE:
        _BY_FILE[test_file] = declaration_for(test_file)
    return _BY_FILE[test_file]


@functools.lru_cache(maxsize=4)
def _from_environment(text: str) -> Declaration:
    """The declaration in ``FSDP_TEST_APPLICABILITY``, parsed once per distinct value."""
    return Declaration.from_json(text)


def declaration_for(test_file: str) -> Optional[Declaration]:
    """The declaration of ``test_file`` (``<pkg>/<name>.py``) in its package's BUILD.

    Returns None when the package has no BUILD file or no ``fsdp_test`` for it.
    """
    directory, base = os.path.split(os.path.abspath(test_file))
    for build_name in ("BUILD.bazel", "BUILD"):
        build_file = os.path.join(directory, build_name)
        if os.path.exists(build_file):
            for kwargs in read_build(build_file).values():
                srcs = kwargs.get("srcs") or [kwargs["name"] + ".py"]
                if os.path.basename(srcs[0]) == base:
                    return Declaration.from_kwargs(kwargs)
            return None
    return None
