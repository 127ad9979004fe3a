"""pytest's --junitxml output from a host without Bazel, with the harness's files beside it."""

import json
import os
import xml.etree.ElementTree as ET

from tools.report import not_run_records
from tools.report.collected import Collected, Problem
from tools.report.files import Outputs, read_text
from tools.report.harness_records import (
    apply_case_params,
    apply_known_failures,
    read_case_params,
    read_known_failures,
)
from tools.report.junit import case_result, junit_behaviour, junit_start
from tools.report.names import split_api
from tools.report.rank_logs import attach_rank_logs


def parse_pytest_junit(path: str, device: str, package: str = "fsdp") -> Collected:
    """Reads pytest's --junitxml output from a host without Bazel.

    An environment.json beside the file (the harness writes one to
    FSDP_TEST_OUTPUT_DIR) describes that host's torch and devices.
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
        # The pytest plugin names items <method>[ws<N>]: one row, the size on the result.
        name, ws = not_run_records.split_world_size(case.get("name", ""))
        result = case_result(
            case,
            test_id=classname + "." + name,
            label=label,
            behaviour=junit_behaviour(classname, package),
            device=device,
            source=path,
            ws=ws,
        )
        if ws is not None:
            result.raw_name = name
            result.method, result.api = split_api(name)
        out.results.append(result)
    _add_pytest_not_run(out, root, path, label, device, package)
    if not out.results:
        out.problems.append(Problem(path, "JUnit XML has no test cases"))
    _apply_records_beside(out, root, path, device)
    return out


def _add_pytest_not_run(
    out: Collected, root: ET.Element, path: str, label: str, device: str, package: str
) -> None:
    """Adds the cases the pytest plugin left out of the run (not_run.json beside the XML)."""
    not_run_path = os.path.join(os.path.dirname(path), not_run_records.FILE_NAME)
    if not os.path.isfile(not_run_path):
        return
    started = junit_start(root)
    if started is not None and os.path.getmtime(not_run_path) < started - 1:
        out.problems.append(
            Problem(not_run_path, "older than the JUnit run it sits beside; ignored")
        )
        return
    entries = not_run_records.read(read_text(not_run_path), not_run_path, out.problems)
    # A case the harness itself found not to apply is in the XML already, as NOT_RUN.
    have = {(r.test_id, r.ws) for r in out.results}
    entries = [
        e for e in entries if ("%s.%s" % (e["classname"], e["method"]), e["world_size"]) not in have
    ]
    out.results.extend(
        not_run_records.results(
            entries,
            lambda classname: junit_behaviour(classname, package),
            label=label,
            device=device,
            source=not_run_path,
        )
    )


def _apply_records_beside(out: Collected, root: ET.Element, path: str, device: str) -> None:
    """The harness's files beside the JUnit XML (FSDP_TEST_OUTPUT_DIR): test_params.json,
    known_failures.json, rank logs and environment.json."""
    params_path = os.path.join(os.path.dirname(path), "test_params.json")
    if os.path.isfile(params_path):
        apply_case_params(
            out.results, read_case_params(read_text(params_path), params_path, out.problems)
        )
    known_path = os.path.join(os.path.dirname(path), "known_failures.json")
    if os.path.isfile(known_path):
        started = junit_start(root)
        if started is not None and os.path.getmtime(known_path) < started - 1:
            # Left by an earlier run in the same FSDP_TEST_OUTPUT_DIR: the harness
            # rewrites the file only when a known bug runs.
            out.problems.append(
                Problem(known_path, "older than the JUnit run it sits beside; ignored")
            )
        else:
            apply_known_failures(
                out.results, read_known_failures(read_text(known_path), known_path, out.problems)
            )
    # The harness's rank logs, when pytest ran with FSDP_TEST_OUTPUT_DIR there.
    attach_rank_logs(out.results, Outputs(os.path.dirname(path), out.problems, subdir="rank_logs"))
    env_path = os.path.join(os.path.dirname(path), "environment.json")
    if os.path.isfile(env_path):
        try:
            env = json.loads(read_text(env_path))
            if not isinstance(env, dict):
                raise ValueError("not a JSON object")
            out.environments.append((device, env, env_path))
        except ValueError as e:
            out.problems.append(Problem(env_path, "bad environment.json: %s" % e))
