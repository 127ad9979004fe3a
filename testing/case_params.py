"""Records the parameters of each test method for the conformance report.

The report (tools/report) puts a result in the column of its FSDP API. The API is a
parameter of the test method (``@parameterized.named_parameters(*cases.API_CASES)``
passes ``api``), but absl's JUnit XML keeps only the generated method name, and
absl 2.x's XML reporter drops per-test properties. So the harness writes the
parameters beside the XML: ``test_params.json`` in the test's output directory
(Bazel's undeclared outputs, or ``FSDP_TEST_OUTPUT_DIR`` under pytest), one entry
per test keyed by ``<Class>.<method>``::

    {"MultipleForwardTest.test_unit_called_twice_matches_reference_fsdp1":
         {"api": "fsdp1"}}

Values that are not JSON scalars are written as their ``repr``.
"""

import collections.abc
import inspect
import json
import os
import unittest
from typing import Any, Dict

FILE_NAME = "test_params.json"

# What this process has recorded; the file is rewritten from it after every test, so
# a test binary's file always holds exactly the tests it ran.
_RECORDED: Dict[str, Dict[str, Any]] = {}


def parameters(test: unittest.TestCase) -> Dict[str, Any]:
    """Returns the arguments absl's ``parameterized`` binds for ``test``'s method.

    Returns {} for a method that is not parameterized, or when absl's generated
    method does not expose its parameters as this reads them (its closure's
    ``testcase_params`` and ``functools.wraps``' ``__wrapped__``, checked with
    absl-py 2.5.1).
    """
    method = getattr(type(test), test._testMethodName, None)
    original = getattr(method, "__wrapped__", None)
    if method is None or original is None or not getattr(method, "__closure__", None):
        return {}
    params = inspect.getclosurevars(method).nonlocals.get("testcase_params")
    if params is None:
        return {}
    try:
        signature = inspect.signature(original)
        if isinstance(params, collections.abc.Mapping):
            bound = signature.bind(test, **params)
        elif isinstance(params, collections.abc.Iterable) and not isinstance(params, (str, bytes)):
            bound = signature.bind(test, *params)
        else:
            bound = signature.bind(test, params)
    except TypeError:
        return {}
    arguments = list(bound.arguments.items())[1:]  # without self
    return {name: _jsonable(value) for name, value in arguments}


def record(test: unittest.TestCase, output_dir: str) -> None:
    """Adds ``test``'s parameters to ``<output_dir>/test_params.json``."""
    key = f"{type(test).__name__}.{test._testMethodName}"
    _RECORDED[key] = parameters(test)
    with open(os.path.join(output_dir, FILE_NAME), "w") as f:
        json.dump(_RECORDED, f, indent=1, sort_keys=True)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
