"""The harness's records beside a test's results: test_params.json (a case's API),
known_failures.json (known torch bugs) and environment.json (torch, devices)."""

import json
from typing import Dict, List, Optional

from tools.report.collected import Problem, TestResult
from tools.report.files import Outputs
from tools.report.known_bugs import apply_known_failure
from tools.report.names import split_api
from tools.report.status import KNOWN_FAILED, KNOWN_PASSED


def read_case_params(text: Optional[str], source: str, problems: List[Problem]) -> Dict[str, dict]:
    """{"<Class>.<method>": {parameter: value}} from the harness's test_params.json."""
    if text is None:
        return {}
    try:
        params = json.loads(text)
        if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
            raise ValueError("not an object of objects")
        return params
    except ValueError as e:
        problems.append(Problem(source, "bad test_params.json: %s" % e))
        return {}


def _case_key(r: TestResult) -> str:
    """`<Class>.<method>`, the key of test_params.json and known_failures.json."""
    parts = r.test_id.split(".")
    return ".".join(parts[-2:]) if len(parts) >= 2 else r.test_id


def apply_case_params(results: List[TestResult], params: Dict[str, dict]) -> None:
    """Takes each method's API from its recorded `api` parameter, if it has one."""
    for r in results:
        if r.method is None or not r.test_id:
            continue
        api = params.get(_case_key(r), {}).get("api")
        if isinstance(api, str) and api:
            r.method, r.api = split_api(r.raw_name, api)


def read_known_failures(
    text: Optional[str], source: str, problems: List[Problem]
) -> Dict[str, Dict[str, str]]:
    """{"<Class>.<method>": record} from the harness's known_failures.json.

    A record has issue, summary, seen_on, outcome and torch (see
    testing/known_failures.py); records with an unknown outcome are problems.
    """
    if text is None:
        return {}
    try:
        records = json.loads(text)
        if not isinstance(records, dict) or not all(isinstance(v, dict) for v in records.values()):
            raise ValueError("not an object of objects")
    except ValueError as e:
        problems.append(Problem(source, "bad known_failures.json: %s" % e))
        return {}
    good = {}
    for key, rec in records.items():
        outcome = rec.get("outcome")
        if outcome not in KNOWN_FAILED + (KNOWN_PASSED,):
            problems.append(
                Problem(source, "known_failures.json: %s has outcome %r" % (key, outcome))
            )
            continue
        good[key] = {k: str(v) for k, v in rec.items()}
    return good


def apply_known_failures(results: List[TestResult], records: Dict[str, Dict[str, str]]) -> None:
    """Turns the results of known torch bugs into KNOWN_BUG (or FAIL) results."""
    for r in results:
        if r.method is None or not r.test_id:
            continue
        bug = records.get(_case_key(r))
        if bug is not None:
            apply_known_failure(r, bug)


def read_environment(outputs: Outputs, source: str, problems: List[Problem]) -> Optional[dict]:
    """The run's environment.json as a dict, or None; parse errors go to `problems`."""
    text = outputs.read("environment.json")
    if text is None:
        for rel in outputs.files:
            if rel.endswith("/environment.json"):
                text = outputs.read(rel)
                break
    if text is None:
        return None
    try:
        env = json.loads(text)
        if not isinstance(env, dict):
            raise ValueError("not a JSON object")
        return env
    except ValueError as e:
        problems.append(Problem(source, "bad environment.json: %s" % e))
        return None
