"""The one record per test case that the conformance report reads: ``cases.json``.

absl's JUnit XML keeps only a case's generated method name and outcome (absl 2.x drops
per-test properties and skip reasons), and pytest's keeps its item name. Everything
else the report needs about a case, the harness writes here, in the test's output
directory (Bazel's undeclared outputs, or ``FSDP_TEST_OUTPUT_DIR`` under pytest; the
pytest plugin also copies it beside ``--junitxml``)::

    {"cases": [{
      "test_id": "ParityTest.test_matches_unsharded_training_full_shard_flat_fsdp1",
      "classname": "fsdp.training.parity_test.ParityTest",
      "method": "test_matches_unsharded_training_full_shard_flat_fsdp1",
      "file": "fsdp/training/parity_test.py",
      "name": "test_matches_unsharded_training_full_shard_flat",
      "device": "cpu", "world_size": 2, "api": "fsdp1",
      "params": {"api": "fsdp1", "options": "{'sharding_strategy': 'FULL_SHARD'}"},
      "known_bug": null, "not_run": null}]}

* ``name``: the case's row in the report: the method name without its API token, and
  for absl's unnamed ``parameters`` the non-API parameters instead of the index.
* ``api``: the ``api`` parameter, else the method name's ``fsdp1``/``fsdp2`` token
  (methods that fix the API in their body), else null (the case tests no one API).
* ``params``: the arguments absl's ``parameterized`` binds (non-JSON values as repr).
* ``known_bug``: the case's known torch bug and how it went (testing/known_failures.py).
* ``not_run``: why the case does not apply here (testing/not_run.py), or null.

One entry per ``(test_id, world_size)``; the file is rewritten after every change, so
it always holds exactly the cases of this process. Standard library only.
"""

import collections.abc
import inspect
import json
import os
import sys
import unittest
from typing import Any, Dict, List, Optional, Tuple

from testing import applicability

FILE_NAME = "cases.json"
APIS = ("fsdp1", "fsdp2")

_RECORDED: Dict[Tuple[str, int], Dict[str, Any]] = {}


def parameters(test: unittest.TestCase) -> Dict[str, Any]:
    """Returns the arguments absl's ``parameterized`` binds for ``test``'s method."""
    return parameters_of(type(test), test._testMethodName)


def parameters_of(cls: type, method_name: str) -> Dict[str, Any]:
    """Returns the arguments absl's ``parameterized`` binds for ``cls.method_name``.

    Returns {} for a method that is not parameterized, or when absl's generated
    method does not expose its parameters as this reads them (its closure's
    ``testcase_params`` and ``functools.wraps``' ``__wrapped__``, checked with
    absl-py 2.5.1).
    """
    method = getattr(cls, method_name, None)
    original = getattr(method, "__wrapped__", None)
    if method is None or original is None or not getattr(method, "__closure__", None):
        return {}
    params = inspect.getclosurevars(method).nonlocals.get("testcase_params")
    if params is None:
        return {}
    try:
        signature = inspect.signature(original)
        if isinstance(params, collections.abc.Mapping):
            bound = signature.bind(None, **params)
        elif isinstance(params, collections.abc.Iterable) and not isinstance(params, (str, bytes)):
            bound = signature.bind(None, *params)
        else:
            bound = signature.bind(None, params)
    except TypeError:
        return {}
    return dict(list(bound.arguments.items())[1:])  # without self


def _api_of(cls: type, method_name: str, params: Dict[str, Any]) -> Optional[str]:
    """The ``api`` parameter, else the one fsdp1/fsdp2 token of the method name, else
    the ``api`` of the file's ``fsdp_test`` (a file about one API)."""
    if params.get("api") in APIS:
        return params["api"]
    tokens = {part for part in method_name.split("_") if part in APIS}
    if len(tokens) == 1:
        return tokens.pop()
    declaration = applicability.for_test_file(test_file(cls))
    return declaration.api if declaration is not None else None


def _without_api(name: str, api: Optional[str]) -> str:
    return "_".join(part for part in name.split("_") if part != api) if api else name


def row_name(cls: type, method_name: str, params: Dict[str, Any], api: Optional[str]) -> str:
    """The case's row: ``test_x_fsdp1`` -> ``test_x``; ``test_y0`` -> ``test_y (steps=3)``.

    absl names a ``named_parameters`` case ``<method>_<testcase_name>`` and an unnamed
    ``parameters`` case ``<method><index>``: the index says nothing, the parameters do.
    """
    original = getattr(getattr(cls, method_name, None), "__wrapped__", None)
    index = method_name[len(original.__name__) :] if original is not None else ""
    if not (index.isdigit() and method_name.startswith(original.__name__)):
        return _without_api(method_name, api)
    shown = [f"{k}={v!r}" for k, v in params.items() if not (k == "api" and v == api)]
    base = _without_api(original.__name__, api)
    return base + (f" ({', '.join(shown)})" if shown else "")


def test_file(cls: type) -> str:
    """The file that defines ``cls``, relative to the working directory when inside it."""
    path = getattr(sys.modules.get(cls.__module__), "__file__", "") or ""
    if not path:
        return cls.__module__
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def describe(cls: type, method_name: str, *, device: str, world_size: int) -> Dict[str, Any]:
    """The record of ``cls.method_name`` at ``world_size`` on ``device`` (see the module doc)."""
    params = parameters_of(cls, method_name)
    api = _api_of(cls, method_name, params)
    return {
        "test_id": f"{cls.__name__}.{method_name}",
        "classname": f"{cls.__module__}.{cls.__qualname__}",
        "method": method_name,
        "file": test_file(cls),
        "name": row_name(cls, method_name, params, api),
        "device": device,
        "world_size": world_size,
        "api": api,
        "params": {name: _jsonable(value) for name, value in params.items()},
        "known_bug": None,
        "not_run": None,
    }


def record(case: Dict[str, Any], output_dir: str, **fields: Any) -> None:
    """Adds ``case`` (from :func:`describe`) to ``<output_dir>/cases.json``.

    ``fields`` (``known_bug``, ``not_run``) update a case recorded before at that
    world size, so a case that started and then turned out not to apply, or hit its
    known bug, stays one record.
    """
    key = (case["test_id"], case["world_size"])
    _RECORDED[key] = dict(_RECORDED.get(key, case), **fields)
    write(output_dir)


def recorded() -> List[Dict[str, Any]]:
    """The cases this process has recorded, in file, world size and id order."""
    return sorted(_RECORDED.values(), key=lambda c: (c["file"], c["world_size"], c["test_id"]))


def write(output_dir: str) -> str:
    """Writes the recorded cases to ``<output_dir>/cases.json``; returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILE_NAME)
    with open(path, "w") as f:
        json.dump({"cases": recorded()}, f, indent=1, sort_keys=True)
    return path


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
