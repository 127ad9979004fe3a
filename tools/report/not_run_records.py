"""Cases that did not apply on the host: the harness's not_run.json, read for the report.

The harness (testing/not_run.py) writes ``not_run.json`` beside its other outputs for
every case its BUILD declaration excludes on the device or at the world size, or that
needs more accelerators than the host has. Under Bazel such a case is also a JUnit skip
(absl keeps no reason: this file has it); under pytest it is left out of the run and
the JUnit XML altogether, so the file is its only record. Either way the report shows a
NOT RUN cell with the reason, never a pass, a failure or a skip.
"""

import json
import re
from typing import Callable, Dict, List, Optional, Tuple

from tools.report.collected import Problem, TestResult
from tools.report.names import split_api
from tools.report.status import NOT_RUN, SKIPPED

FILE_NAME = "not_run.json"
# testing/not_run.py's PREFIX: a skip whose reason starts so is a case that does not apply.
PREFIX = "not run: "
_WS_SUFFIX = re.compile(r"^(?P<name>.+)\[ws(?P<ws>\d+)\]$")
_FIELDS = ("classname", "method", "device", "world_size", "reason")


def split_world_size(name: str) -> Tuple[str, Optional[int]]:
    """``test_x[ws2]`` (the pytest plugin's item name) -> (``test_x``, 2)."""
    m = _WS_SUFFIX.match(name)
    if not m:
        return name, None
    return m.group("name"), int(m.group("ws"))


def read(text: Optional[str], source: str, problems: List[Problem]) -> List[Dict]:
    """The entries of a not_run.json (``{"cases": [...]}``); bad input goes to ``problems``."""
    if text is None:
        return []
    try:
        cases = json.loads(text).get("cases")
        if not isinstance(cases, list) or not all(
            isinstance(c, dict) and all(f in c for f in _FIELDS) for c in cases
        ):
            raise ValueError('expected {"cases": [{%s}, ...]}' % ", ".join(_FIELDS))
    except (ValueError, AttributeError) as e:
        problems.append(Problem(source, "bad %s: %s" % (FILE_NAME, e)))
        return []
    return cases


def _key(classname: str, method: str) -> str:
    """``<Class>.<method>``, as test_params.json and known_failures.json key cases."""
    return "%s.%s" % (classname.rsplit(".", 1)[-1], method)


def apply(results: List[TestResult], entries: List[Dict]) -> None:
    """Turns the JUnit skips the entries explain into NOT_RUN results with the reason."""
    reasons = {(_key(e["classname"], e["method"]), e["world_size"]): e["reason"] for e in entries}
    for r in results:
        if r.method is None or r.status != SKIPPED:
            continue
        key = ".".join(r.test_id.split(".")[-2:])
        reason = reasons.get((key, r.ws))
        if reason is not None:
            r.status, r.message = NOT_RUN, reason


def results(entries: List[Dict], behaviour_of: Callable[[str], str], **fields) -> List[TestResult]:
    """NOT_RUN results for the entries (pytest leaves such cases out of its JUnit XML).

    ``behaviour_of`` maps an entry's classname to its row; ``fields`` are the other
    TestResult fields (label, device, source).
    """
    out = []
    for e in entries:
        method, api = split_api(e["method"])
        out.append(
            TestResult(
                behaviour=behaviour_of(e["classname"]),
                method=method,
                api=api,
                status=NOT_RUN,
                raw_name=e["method"],
                test_id="%s.%s" % (e["classname"], e["method"]),
                message=e["reason"],
                ws=e["world_size"],
                **fields,
            )
        )
    return out
