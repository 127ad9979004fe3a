"""Shared test vocabulary: the parameter cases and constants FSDP test files use.

    from absl.testing import parameterized
    from testing.fsdp import api_cases

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_something(self, api): ...

The named cases give test methods readable ``_fsdp1``/``_fsdp2`` suffixes; the
report takes a result's API from the ``api`` parameter itself, which the harness
records (testing/case_params.py).
"""

from typing import Any, Dict, Tuple

from testing.fsdp import wrapping

# One (name, api) case per FSDP API, for @parameterized.named_parameters.
API_CASES: Tuple[Tuple[str, str], ...] = tuple((api, api) for api in wrapping.APIS)

# The batch index evaluation passes use: no training step draws it, so an
# evaluation cannot pass because the model has memorized its inputs.
EVAL_STEP = 100


def api_cases_with(**per_api: Dict[str, Any]) -> Tuple[Tuple[str, str, Dict[str, Any]], ...]:
    """(name, api, options) cases: one per API named, each with its wrap options.

    Example: ``api_cases_with(fsdp1={"use_orig_params": True}, fsdp2={})``
    gives ``(("fsdp1", "fsdp1", {...}), ("fsdp2", "fsdp2", {}))``.
    """
    for api in per_api:
        if api not in wrapping.APIS:
            raise ValueError(f"unknown api {api!r}; use {wrapping.APIS}")
    return tuple((api, api, dict(options)) for api, options in per_api.items())
