"""pytest's --junitxml output from a host without Bazel, with the harness's files beside it."""

import os
import xml.etree.ElementTree as ET
from typing import Dict

from tools.report import case_records
from tools.report.collected import Collected, Problem, TestResult
from tools.report.files import Outputs, read_text
from tools.report.harness_records import parse_environment
from tools.report.junit import case_result, junit_start
from tools.report.rank_logs import attach_rank_logs


def _pytest_key(case: Dict) -> str:
    """The pytest plugin names a case's item ``<method>[ws<N>]``."""
    return "%s.%s[ws%d]" % (case["classname"], case["method"], case["world_size"])


def parse_pytest_junit(path: str, device: str, package: str = "fsdp") -> Collected:
    """Reads pytest's --junitxml output from a host without Bazel.

    The harness's files beside it (the pytest plugin writes cases.json there, and
    FSDP_TEST_OUTPUT_DIR puts environment.json and rank logs there) give each case
    its row, API, world size, known bug and not-run reason.
    """
    out = Collected()
    out.inputs.append("pytest JUnit (%s): %s" % (device, path))
    label = "junit:" + os.path.basename(path)
    if not os.path.isfile(path):
        out.problems.append(Problem(path, "JUnit file not found"))
        return out
    try:
        root = ET.fromstring(read_text(path))
    except ET.ParseError as e:
        out.problems.append(Problem(path, "malformed JUnit XML: %s" % e))
        return out
    for case in root.iter("testcase"):
        classname = case.get("classname", "")
        out.results.append(
            case_result(
                case,
                test_id=classname + "." + case.get("name", ""),
                label=label,
                behaviour=classname,
                device=device,
                source=path,
            )
        )
    if not out.results:
        out.problems.append(Problem(path, "JUnit XML has no test cases"))
    _apply_records_beside(out, root, path, label, device, package)
    return out


def _apply_records_beside(
    out: Collected, root: ET.Element, path: str, label: str, device: str, package: str
) -> None:
    """The harness's files beside the JUnit XML: cases.json, rank logs, environment.json."""
    beside = os.path.dirname(path)
    cases_path = os.path.join(beside, case_records.FILE_NAME)
    text = read_text(cases_path) if os.path.isfile(cases_path) else None
    started = junit_start(root)
    if text is not None and started is not None and os.path.getmtime(cases_path) < started - 1:
        # Left by an earlier run in the same directory: the plugin rewrites it at the
        # end of every session that planned cases.
        out.problems.append(Problem(cases_path, "older than the JUnit run it sits beside; ignored"))
        text = None
    cases = case_records.read(text, cases_path, out.problems)
    by_result = {_result_key(r): r for r in out.results}
    unmatched = case_records.apply(out.results, cases, _result_key, _pytest_key)
    for case in cases:
        r = by_result.get(_pytest_key(case))
        if r is not None:
            r.behaviour = case_records.behaviour(case, package)
            r.raw_name, r.test_id = case["method"], "%s.%s" % (case["classname"], case["method"])
    out.results.extend(
        case_records.not_run_results(
            unmatched, package, label=label, device=device, source=cases_path
        )
    )
    attach_rank_logs(out.results, Outputs(beside, out.problems, subdir="rank_logs"))
    env_path = os.path.join(beside, "environment.json")
    if os.path.isfile(env_path):
        env = parse_environment(read_text(env_path), env_path, out.problems)
        if env is not None:
            out.environments.append((device, env, env_path))


def _result_key(r: TestResult) -> str:
    return r.test_id
