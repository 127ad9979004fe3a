"""JUnit XML test cases (absl's test.xml, Bazel's fallback, pytest's) as TestResults."""

import datetime
import xml.etree.ElementTree as ET
from typing import Any, List, Optional, Tuple

from tools.report import case_records
from tools.report.collected import Problem, TestResult
from tools.report.files import read_text, tail, to_float
from tools.report.status import FAIL, KNOWN_BUG, MALFORMED, NO_RESULT, NOT_RUN, PASS, SKIPPED


def _case_status(case: ET.Element) -> Tuple[str, str, str]:
    """(status, message, text) of a <testcase>."""
    for tag in ("failure", "error"):
        el = case.find(tag)
        if el is not None:
            msg = el.get("message") or ""
            text = (el.text or "").strip("\n")
            if not msg and text:
                msg = text.strip().splitlines()[-1]
            kind = el.get("type") or ""
            if kind and tag == "error" and kind not in msg:
                msg = msg or kind
            return FAIL, msg, text
    el = case.find("skipped")
    if el is not None:
        msg = el.get("message") or (el.text or "").strip()
        if el.get("type") == "pytest.xfail":
            # An expected failure: the harness's known torch bug reproduced.
            # The case's record (cases.json), when found, names the bug.
            return (
                KNOWN_BUG,
                ("expected failure (pytest xfail)%s" % (": " + msg if msg else "")),
                (el.text or "").strip("\n"),
            )
        if msg == "xfail-marked test passes unexpectedly":
            return FAIL, msg, ""
        if msg.startswith(case_records.PREFIX):
            # The harness's "does not apply here" (testing/not_run.py): not a skip.
            return NOT_RUN, msg[len(case_records.PREFIX) :], ""
        return SKIPPED, msg, ""
    for prop in case.iter("property"):
        if prop.get("name") == "EXPECTED_FAILURE":
            # absl records an expected failure's traceback as a property.
            text = prop.get("value") or ""
            lines = [line for line in text.strip().splitlines() if line.strip()]
            known = [line for line in lines if line.startswith("known torch bug")]
            return KNOWN_BUG, (known or lines or ["expected failure"])[0], text
    if case.get("status") == "notrun" or case.get("result") == "suppressed":
        return SKIPPED, "not run (suppressed)", ""
    return PASS, "", ""


def _system_out(root: ET.Element) -> str:
    parts = [(el.text or "") for el in root.iter("system-out")]
    parts += [(el.text or "") for el in root.iter("system-err")]
    return "\n".join(p.strip("\n") for p in parts if p.strip())


def _whole_target(fields: dict, bazel_name: str, status: str, message: str, body="", duration=None):
    """A target-level result (no per-test results); ``fields``: label, device, ..."""
    return [
        TestResult(
            method=None,
            status=status,
            message=message,
            text=tail(body),
            duration=duration,
            raw_name=bazel_name,
            **fields,
        )
    ]


def _bazel_fallback(root: ET.Element, fields: dict, bazel_name: str) -> Optional[List[TestResult]]:
    """The result of Bazel's own test.xml, or None when the test wrote its own.

    Bazel writes one (a single case named after the target, no classname) when the
    test binary did not, e.g. it crashed.
    """
    cases = list(root.iter("testcase"))
    if (
        len(cases) != 1
        or cases[0].get("classname")
        or cases[0].get("name", "") not in (bazel_name, fields["label"])
    ):
        return None
    status, msg, body = _case_status(cases[0])
    log = _system_out(root)
    if status == FAIL:
        msg = "%s (no per-test results)" % (msg or "target failed")
    duration = to_float(cases[0].get("time"))
    return _whole_target(fields, bazel_name, status, msg, log or body, duration)


def parse_bazel_xml(
    text: str,
    *,
    source: str,
    label: str,
    behaviour: str,
    device: str,
    ws: Optional[int],
    bazel_name: str,
    shard: str = "",
    run: str = "",
    log_path: str = "",
    problems: List[Problem],
) -> List[TestResult]:
    """Parses one test.xml of a Bazel target."""
    fields = dict(
        label=label,
        behaviour=behaviour,
        device=device,
        ws=ws,
        shard=shard,
        run=run,
        source=source,
        log_path=log_path,
    )
    log = read_text(log_path) if log_path else ""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        problems.append(Problem(source, "malformed XML: %s" % e))
        return _whole_target(fields, bazel_name, MALFORMED, "malformed test.xml: %s" % e, log)
    cases = list(root.iter("testcase"))
    if not cases:
        problems.append(Problem(source, "test.xml has no test cases"))
        return _whole_target(fields, bazel_name, NO_RESULT, "test.xml has no test cases", log)
    fallback = _bazel_fallback(root, fields, bazel_name)
    if fallback is not None:
        return fallback
    out = []
    for case in cases:
        name = case.get("name", "")
        classname = case.get("classname", "")
        test_id = (classname + "." + name.split(" (")[0]) if classname else name
        out.append(case_result(case, test_id=test_id, **fields))
    return out


def case_result(case: ET.Element, test_id: str, **fields: Any) -> TestResult:
    """The TestResult of one JUnit ``testcase``; ``fields`` are its other TestResult fields.

    Its row and API come from the case's record (case_records.apply); until then the
    row is the JUnit name.
    """
    name = case.get("name", "")
    status, msg, body = _case_status(case)
    return TestResult(
        method=name,
        status=status,
        raw_name=name,
        test_id=test_id,
        message=msg,
        text=tail(body),
        duration=to_float(case.get("time")),
        **fields,
    )


def junit_start(root: ET.Element) -> Optional[float]:
    """When the run began (epoch seconds), from the testsuite's timestamp."""
    for suite in root.iter("testsuite"):
        stamp = suite.get("timestamp")
        if stamp:
            try:
                when = datetime.datetime.fromisoformat(stamp)
            except ValueError:
                return None
            if when.tzinfo is None:
                return None  # local time of an unknown host: cannot compare
            return when.timestamp()
    return None
