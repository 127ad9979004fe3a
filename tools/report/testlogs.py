"""A bazel-testlogs tree: each target's (shard's, run's) test.xml and outputs, read."""

import os
import re
from typing import Dict, Optional, Tuple

from tools.report import case_records
from tools.report.collected import Collected, Problem, TargetInfo, TestResult
from tools.report.files import Outputs, read_text, tail
from tools.report.harness_records import read_environment
from tools.report.junit import parse_bazel_xml
from tools.report.rank_logs import attach_rank_logs
from tools.report.status import NO_RESULT

_SHARD_RE = re.compile(r"shard_(\d+)_of_(\d+)")
_RUN_RE = re.compile(r"run_(\d+)_of_(\d+)")


def drop_stale(col: Collected) -> Collected:
    """Drops Bazel results of targets the BUILD files no longer declare.

    bazel-testlogs keeps the folders of deleted or renamed targets; without a
    target list (no query) everything is kept.
    """
    if not col.have_query:
        return col
    stale = sorted(
        {r.label for r in col.results if r.label.startswith("//") and r.label not in col.targets}
    )
    if stale:
        col.results = [r for r in col.results if r.label not in stale]
        col.notes.append(
            "ignored results of targets no longer in the BUILD files: " + ", ".join(stale)
        )
    return col


def _where(root: str, dirpath: str) -> Tuple[str, str, str, str, int]:
    """(package, target, shard "i/n", run "i/n", number of shards) of a result directory."""
    rel = os.path.relpath(dirpath, root).split(os.sep)
    shard = run = ""
    n_shards = 0
    while len(rel) > 1 and (_SHARD_RE.search(rel[-1]) or _RUN_RE.search(rel[-1])):
        m = _SHARD_RE.search(rel[-1])
        if m:
            shard = "%s/%s" % m.groups()
            n_shards = int(m.group(2))
        m = _RUN_RE.search(rel[-1])
        if m:
            run = "%s/%s" % m.groups()
        rel = rel[:-1]
    return "/".join(rel[:-1]), rel[-1], shard, run, n_shards


def _target_fields(pkg: str, target: str, targets: Dict[str, TargetInfo]) -> dict:
    """label, behaviour, device and world size of a target, as the query describes it.

    A target no query describes gets them from its cases' records (_place).
    """
    label = "//%s:%s" % (pkg, target)
    info = targets.get(label)
    if info is None:
        return dict(label=label, behaviour=target, device="other", ws=None)
    return dict(label=label, behaviour=info.behaviour, device=info.device, ws=info.ws)


def _place(results, cases, package: str) -> None:
    """Places the results of a target no query describes where its records say."""
    if not cases:
        return
    for r in results:
        r.behaviour = case_records.behaviour(cases[0], package)
        r.device, r.ws = cases[0]["device"], cases[0]["world_size"]


def _case_key(r: TestResult) -> str:
    """``<Class>.<method>`` of an absl result, as cases.json keys it."""
    return ".".join(r.test_id.split(".")[-2:])


def _read_result_dir(
    out: Collected, dirpath: str, has_xml: bool, bazel_name: str, common: dict, package: str
) -> None:
    """Reads one result directory (test.xml, test.log, outputs) into ``out``."""
    xml_path = os.path.join(dirpath, "test.xml")
    if not has_xml:
        out.problems.append(Problem(dirpath, "test.log without test.xml"))
        results = [
            TestResult(
                method=None,
                status=NO_RESULT,
                message="no test.xml (see test.log)",
                text=tail(read_text(common["log_path"])),
                source=dirpath,
                raw_name=common["label"],
                **common,
            )
        ]
    else:
        results = parse_bazel_xml(
            read_text(xml_path),
            source=xml_path,
            bazel_name=bazel_name,
            problems=out.problems,
            **common,
        )
    outputs = Outputs(dirpath, out.problems)
    cases = case_records.read(outputs.read(case_records.FILE_NAME), dirpath, out.problems)
    if common["device"] == "other":
        _place(results, cases, package)
    case_records.apply(results, cases, _case_key, lambda c: c["test_id"])
    attach_rank_logs(results, outputs)
    env = read_environment(outputs, dirpath, out.problems)
    if env is not None:
        out.environments.append((results[0].device, env, common["label"]))
    out.results.extend(results)


def _missing_shards(out: Collected, root: str, shard_seen) -> None:
    """A NO_RESULT result and a problem for each shard without a result directory."""
    for (label, run), (n, seen, common) in sorted(shard_seen.items()):
        for i in range(1, n + 1):
            if i not in seen:
                c = dict(common, shard="%d/%d" % (i, n), run=run)
                where = "%s shard %d/%d%s" % (label, i, n, " run " + run if run else "")
                out.problems.append(Problem(where, "shard has no result directory"))
                out.results.append(
                    TestResult(
                        method=None,
                        status=NO_RESULT,
                        raw_name=label,
                        source=root,
                        message="shard %d of %d has no result" % (i, n),
                        **c,
                    )
                )


def scan_testlogs(
    root: str, package: str = "fsdp", targets: Optional[Dict[str, TargetInfo]] = None
) -> Collected:
    """Reads a bazel-testlogs tree.

    A target's behaviour, device and world size come from `targets` (the query's
    tags); targets it does not list are placed by their cases' records.
    """
    targets = targets or {}
    out = Collected()
    out.inputs.append("bazel testlogs: " + root)
    # (label, run) -> (n shards, shards seen, info for missing ones)
    shard_seen: Dict[Tuple[str, str], Tuple[int, set, dict]] = {}
    start = os.path.join(root, package) if package else root
    if not os.path.isdir(start):
        out.notes.append("%s: no results under %s/" % (root, package or "."))
        return out
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames[:] = sorted(
            d for d in dirnames if d != "test.outputs" and not d.endswith(".outputs_manifest")
        )
        if "test.xml" not in filenames and "test.log" not in filenames:
            continue
        pkg, target, shard, run, n_shards = _where(root, dirpath)
        log_path = os.path.join(dirpath, "test.log")
        common = _target_fields(pkg, target, targets)
        common.update(shard=shard, run=run, log_path=log_path if os.path.exists(log_path) else "")
        if n_shards:
            entry = shard_seen.setdefault((common["label"], run), (n_shards, set(), common))
            entry[1].add(int(shard.split("/")[0]))
        _read_result_dir(out, dirpath, "test.xml" in filenames, pkg + "/" + target, common, package)
    _missing_shards(out, root, shard_seen)
    return out
