"""The harness's one record per test case, ``cases.json`` (testing/case_params.py), read.

Each record says what the JUnit XML cannot: the case's row (``name``), FSDP API,
device, world size and test file, the known torch bug it hit and how (``known_bug``),
and why it did not apply here (``not_run``). The JUnit XML gives the outcome.
"""

import json
import os
from typing import Callable, Dict, List, Optional

from tools.report.collected import Problem, TestResult
from tools.report.known_bugs import apply_known_failure
from tools.report.status import KNOWN_FAILED, KNOWN_PASSED, NOT_RUN, SKIPPED

FILE_NAME = "cases.json"
# testing/not_run.py's PREFIX: a skip whose reason starts so is a case that does not apply.
PREFIX = "not run: "
_FIELDS = ("test_id", "classname", "method", "file", "name", "device", "world_size", "api")


def read(text: Optional[str], source: str, problems: List[Problem]) -> List[Dict]:
    """The records of a cases.json (``{"cases": [...]}``); bad input goes to ``problems``."""
    if text is None:
        return []
    try:
        cases = json.loads(text).get("cases")
        if not isinstance(cases, list) or not all(
            isinstance(c, dict) and all(f in c for f in _FIELDS) for c in cases
        ):
            raise ValueError('expected {"cases": [{%s, ...}, ...]}' % ", ".join(_FIELDS))
    except (ValueError, AttributeError) as e:
        problems.append(Problem(source, "bad %s: %s" % (FILE_NAME, e)))
        return []
    for case in cases:
        bug = case.get("known_bug")
        if bug is not None and (
            not isinstance(bug, dict) or bug.get("outcome") not in KNOWN_FAILED + (KNOWN_PASSED,)
        ):
            problems.append(
                Problem(source, "%s: %s has known_bug %r" % (FILE_NAME, case["test_id"], bug))
            )
            case["known_bug"] = None
    return cases


def behaviour(case: Dict, package: str) -> str:
    """The case's row group: its test file without ``.py`` and the package's prefix."""
    path = os.path.splitext(case["file"])[0]
    if package and path.startswith(package + "/"):
        return path[len(package) + 1 :]
    return path


def _fill(r: TestResult, case: Dict) -> None:
    """Gives a JUnit result the facts its record has."""
    r.method, r.api = case["name"], case["api"]
    if r.ws is None:
        r.ws = case["world_size"]
    if case.get("known_bug"):
        apply_known_failure(r, {k: str(v) for k, v in case["known_bug"].items()})
    if case.get("not_run") and r.status == SKIPPED:
        r.status, r.message = NOT_RUN, case["not_run"]


def apply(
    results: List[TestResult],
    cases: List[Dict],
    result_key: Callable[[TestResult], str],
    case_key: Callable[[Dict], str],
) -> List[Dict]:
    """Applies each case's record to its result; returns the records no result has.

    ``result_key`` and ``case_key`` name a case the same way for both: absl's
    ``<Class>.<method>``, or pytest's ``<module>.<Class>.<method>[ws<N>]``.
    """
    by_key = {case_key(c): c for c in cases}
    matched = set()
    for r in results:
        case = by_key.get(result_key(r)) if r.method is not None else None
        if case is not None:
            _fill(r, case)
            matched.add(case_key(case))
    return [c for c in cases if case_key(c) not in matched]


def not_run_results(cases: List[Dict], package: str, **fields) -> List[TestResult]:
    """NOT_RUN results for the records with a not-run reason (pytest leaves them out
    of its JUnit XML); ``fields`` are the other TestResult fields (label, device, source)."""
    return [
        TestResult(
            behaviour=behaviour(c, package),
            method=c["name"],
            api=c["api"],
            status=NOT_RUN,
            raw_name=c["method"],
            test_id="%s.%s" % (c["classname"], c["method"]),
            message=c["not_run"],
            ws=c["world_size"],
            **fields,
        )
        for c in cases
        if c.get("not_run")
    ]
