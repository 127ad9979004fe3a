"""Reads test results from disk: Bazel testlogs, pytest JUnit XML, the
`bazel query --output=xml` target list, environment.json and per-rank logs.

Every reader returns a model.Collected and never raises on bad input: a file
that is missing or cannot be parsed becomes a Problem plus a target-level
result with status "no result" / "malformed".
"""

import datetime
import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from typing import Any, Dict, List, Optional, Tuple

from tools.report import model, not_run_records

M = model

MAX_LOG_CHARS = 60_000  # per rank-log section / log tail kept in a report
_SHARD_RE = re.compile(r"shard_(\d+)_of_(\d+)")
_RUN_RE = re.compile(r"run_(\d+)_of_(\d+)")
_SECTION_RE = re.compile(r"^==== (.+?) ====\s*$")


def tail(text: str, limit: int = MAX_LOG_CHARS) -> str:
    """The last `limit` characters of `text`, cut at a line start and marked as cut."""
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    cut = cut[cut.find("\n") + 1 :] if "\n" in cut else cut
    return "[... %d characters cut ...]\n%s" % (len(text) - len(cut), cut)


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


def _float(value) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------
# Query XML.


def parse_query_xml(text: str, source: str, package: str = "fsdp") -> M.Collected:
    """Targets (device, world size, API, disabled reason) from `bazel query --output=xml`."""
    out = M.Collected()
    out.inputs.append("targets: " + source)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        out.problems.append(M.Problem(source, "cannot parse query XML: %s" % e))
        return out
    out.have_query = True
    for rule in root.iter("rule"):
        label = rule.get("name", "")
        if not label.startswith("//") or ":" not in label:
            continue
        pkg, name = label[2:].split(":", 1)
        if package and not (pkg == package or pkg.startswith(package + "/")):
            continue
        tags: List[str] = []
        for lst in rule.iter("list"):
            if lst.get("name") == "tags":
                tags.extend(s.get("value", "") for s in lst.iter("string"))
        generator = next(
            (
                s.get("value", "")
                for s in rule.findall("string")
                if s.get("name") == "generator_name"
            ),
            "",
        )
        behaviour, device, ws = M.target_metadata(name, tags, generator)
        behaviour = _behaviour_name(pkg, behaviour, package)
        reasons = [t.split(":", 1)[1].strip() for t in tags if t.startswith("disabled:")]
        disabled = "disabled" in tags or bool(reasons)
        apis = tuple(a for a in M.KNOWN_APIS if a in tags)
        out.targets[label] = M.TargetInfo(
            label=label,
            behaviour=behaviour,
            device=device,
            ws=ws,
            apis=apis,
            tags=tuple(tags),
            disabled=disabled,
            reason="; ".join(reasons),
        )
    return out


def run_bazel_query(
    workspace: str, package: str = "fsdp", timeout: float = 300
) -> Tuple[Optional[str], str]:
    """Runs tools/bazel query; returns (xml text or None, description)."""
    bazel = os.path.join(workspace, "tools", "bazel")
    pattern = "tests(//%s/...)" % package
    if not os.access(bazel, os.X_OK):
        return None, "tools/bazel not found; disabled targets are not shown"
    try:
        proc = subprocess.run(
            [bazel, "query", "--output=xml", pattern],
            cwd=workspace,
            capture_output=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return None, "bazel query failed (%s); disabled targets are not shown" % e
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        return None, (
            "bazel query exited %d (%s); disabled targets are not shown"
            % (proc.returncode, err[-1] if err else "no message")
        )
    return proc.stdout.decode("utf-8", "replace"), "tools/bazel query '%s'" % pattern


def _behaviour_name(pkg: str, behaviour: str, package: str) -> str:
    """Targets in sub-packages of //fsdp keep their sub-path in the row name."""
    if package and pkg.startswith(package + "/"):
        return pkg[len(package) + 1 :] + "/" + behaviour
    if not package and pkg:
        return pkg + "/" + behaviour
    return behaviour


# --------------------------------------------------------------------------
# Undeclared outputs: environment.json and rank logs.


class Outputs:
    """Files of one test's undeclared outputs (zip or plain directory)."""

    def __init__(self, result_dir: str, problems: List[M.Problem], subdir: str = ""):
        """Indexes `<result_dir>/test.outputs`, or only `<result_dir>/<subdir>`."""
        self.files: Dict[str, object] = {}  # relative path -> reader
        base = os.path.join(result_dir, "test.outputs")
        top = base
        if subdir:
            base, top = result_dir, os.path.join(result_dir, subdir)
        if not os.path.isdir(top):
            return
        for dirpath, _, filenames in os.walk(top):
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                rel = os.path.relpath(full, base).replace(os.sep, "/")
                if fn == "outputs.zip" and dirpath == base:
                    self._add_zip(full, problems)
                else:
                    self.files[rel] = lambda p=full: _read_text(p)

    def _add_zip(self, path: str, problems: List[M.Problem]) -> None:
        try:
            zf = zipfile.ZipFile(path)
            names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            problems.append(M.Problem(path, "cannot read outputs.zip: %s" % e))
            return

        def reader(name, zf=zf, path=path):
            try:
                return zf.read(name).decode("utf-8", errors="replace")
            except (zipfile.BadZipFile, OSError, KeyError) as e:
                problems.append(M.Problem(path, "cannot read %s: %s" % (name, e)))
                return ""

        for name in names:
            if not name.endswith("/"):
                self.files.setdefault(name, lambda n=name: reader(n))

    def read(self, rel: str) -> Optional[str]:
        """The text of output file `rel`, or None if absent."""
        fn = self.files.get(rel)
        return fn() if fn else None

    def rank_logs(self) -> Dict[str, Dict[int, str]]:
        """{test class: {rank: path}} of rank_logs/<Class>/rank<R>.log."""
        out: Dict[str, Dict[int, str]] = {}
        for rel in self.files:
            m = re.match(r"^(?:.*/)?rank_logs/([^/]+)/rank(\d+)\.log$", rel)
            if m:
                out.setdefault(m.group(1), {})[int(m.group(2))] = rel
        return out


def split_sections(text: str) -> List[Tuple[str, str]]:
    """Splits a rank log into (test id, section text) at `==== id ====` lines."""
    sections: List[Tuple[str, List[str]]] = []
    for line in text.splitlines(keepends=True):
        m = _SECTION_RE.match(line.rstrip("\n"))
        if m:
            sections.append((m.group(1).strip(), [line]))
        elif sections:
            sections[-1][1].append(line)
    return [(tid, "".join(lines)) for tid, lines in sections]


def _id_matches(header: str, classname: str, name: str) -> bool:
    def base(s):
        return s.split(" (")[0].strip()

    header, name = base(header), base(name)
    if classname and header == classname + "." + name:
        return True
    short = classname.rsplit(".", 1)[-1] if classname else ""
    want = (short + "." + name) if short else name
    return header == want or header.endswith("." + want)


def attach_rank_logs(results: List[M.TestResult], outputs: Outputs) -> None:
    """Puts each failing test's section of every rank log into the result."""
    failing = [r for r in results if r.status in M.NEEDS_DETAIL]
    if not failing:
        return
    logs = outputs.rank_logs()
    if not logs:
        return
    cache: Dict[str, List[Tuple[str, str]]] = {}

    def sections(rel):
        if rel not in cache:
            cache[rel] = split_sections(outputs.read(rel) or "")
        return cache[rel]

    for r in failing:
        classname = r.test_id.rsplit(".", 1)[0] if r.method is not None else ""
        short = classname.rsplit(".", 1)[-1]
        classes = [short] if short in logs else sorted(logs)
        for cls in classes:
            for rank in sorted(logs[cls]):
                secs = sections(logs[cls][rank])
                if r.method is None:
                    # Whole target failed (crash, timeout): the last section of each
                    # rank is the test that was running.
                    if secs:
                        r.rank_logs.append(
                            (
                                "%s rank %d (last test: %s)" % (cls, rank, secs[-1][0]),
                                tail(secs[-1][1]),
                            )
                        )
                    continue
                for tid, body in secs:
                    # A section with only its header line says nothing.
                    if _id_matches(tid, classname, r.raw_name) and body.strip().count("\n"):
                        label = (
                            "rank %d" % rank if len(classes) == 1 else "%s rank %d" % (cls, rank)
                        )
                        r.rank_logs.append((label, tail(body)))


def read_case_params(
    text: Optional[str], source: str, problems: List[M.Problem]
) -> Dict[str, dict]:
    """{"<Class>.<method>": {parameter: value}} from the harness's test_params.json."""
    if text is None:
        return {}
    try:
        params = json.loads(text)
        if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
            raise ValueError("not an object of objects")
        return params
    except ValueError as e:
        problems.append(M.Problem(source, "bad test_params.json: %s" % e))
        return {}


def _case_key(r: M.TestResult) -> str:
    """`<Class>.<method>`, the key of test_params.json and known_failures.json."""
    parts = r.test_id.split(".")
    return ".".join(parts[-2:]) if len(parts) >= 2 else r.test_id


def apply_case_params(results: List[M.TestResult], params: Dict[str, dict]) -> None:
    """Takes each method's API from its recorded `api` parameter, if it has one."""
    for r in results:
        if r.method is None or not r.test_id:
            continue
        api = params.get(_case_key(r), {}).get("api")
        if isinstance(api, str) and api:
            r.method, r.api = M.split_api(r.raw_name, api)


def read_known_failures(
    text: Optional[str], source: str, problems: List[M.Problem]
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
        problems.append(M.Problem(source, "bad known_failures.json: %s" % e))
        return {}
    good = {}
    for key, rec in records.items():
        outcome = rec.get("outcome")
        if outcome not in M.KNOWN_FAILED + (M.KNOWN_PASSED,):
            problems.append(
                M.Problem(source, "known_failures.json: %s has outcome %r" % (key, outcome))
            )
            continue
        good[key] = {k: str(v) for k, v in rec.items()}
    return good


def apply_known_failures(results: List[M.TestResult], records: Dict[str, Dict[str, str]]) -> None:
    """Turns the results of known torch bugs into KNOWN_BUG (or FAIL) results."""
    for r in results:
        if r.method is None or not r.test_id:
            continue
        bug = records.get(_case_key(r))
        if bug is not None:
            M.apply_known_failure(r, bug)


def read_environment(outputs: Outputs, source: str, problems: List[M.Problem]) -> Optional[dict]:
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
        problems.append(M.Problem(source, "bad environment.json: %s" % e))
        return None


# --------------------------------------------------------------------------
# JUnit XML (absl, Bazel's fallback, pytest).


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
            return M.FAIL, msg, text
    el = case.find("skipped")
    if el is not None:
        msg = el.get("message") or (el.text or "").strip()
        if el.get("type") == "pytest.xfail":
            # An expected failure: the harness's known torch bug reproduced.
            # known_failures.json, when found, names the bug.
            return (
                M.KNOWN_BUG,
                ("expected failure (pytest xfail)%s" % (": " + msg if msg else "")),
                (el.text or "").strip("\n"),
            )
        if msg == "xfail-marked test passes unexpectedly":
            return M.FAIL, msg, ""
        if msg.startswith(not_run_records.PREFIX):
            # The harness's "does not apply here" (testing/not_run.py): not a skip.
            return M.NOT_RUN, msg[len(not_run_records.PREFIX) :], ""
        return M.SKIPPED, msg, ""
    for prop in case.iter("property"):
        if prop.get("name") == "EXPECTED_FAILURE":
            # absl records an expected failure's traceback as a property.
            text = prop.get("value") or ""
            lines = [line for line in text.strip().splitlines() if line.strip()]
            known = [line for line in lines if line.startswith("known torch bug")]
            return M.KNOWN_BUG, (known or lines or ["expected failure"])[0], text
    if case.get("status") == "notrun" or case.get("result") == "suppressed":
        return M.SKIPPED, "not run (suppressed)", ""
    return M.PASS, "", ""


def _system_out(root: ET.Element) -> str:
    parts = [(el.text or "") for el in root.iter("system-out")]
    parts += [(el.text or "") for el in root.iter("system-err")]
    return "\n".join(p.strip("\n") for p in parts if p.strip())


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
    problems: List[M.Problem],
) -> List[M.TestResult]:
    """Parses one test.xml of a Bazel target."""

    def whole(status, message, body="", duration=None):
        return [
            M.TestResult(
                label=label,
                behaviour=behaviour,
                device=device,
                method=None,
                status=status,
                message=message,
                text=tail(body),
                duration=duration,
                shard=shard,
                run=run,
                ws=ws,
                source=source,
                log_path=log_path,
                raw_name=bazel_name,
            )
        ]

    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        problems.append(M.Problem(source, "malformed XML: %s" % e))
        return whole(
            M.MALFORMED, "malformed test.xml: %s" % e, _read_text(log_path) if log_path else ""
        )
    cases = list(root.iter("testcase"))
    if not cases:
        problems.append(M.Problem(source, "test.xml has no test cases"))
        return whole(
            M.NO_RESULT, "test.xml has no test cases", _read_text(log_path) if log_path else ""
        )
    # Bazel writes its own test.xml (one case named after the target, no
    # classname) when the test binary did not write one, e.g. it crashed.
    if (
        len(cases) == 1
        and not cases[0].get("classname")
        and cases[0].get("name", "") in (bazel_name, label)
    ):
        status, msg, body = _case_status(cases[0])
        log = _system_out(root)
        if status == M.FAIL:
            msg = "%s (no per-test results)" % (msg or "target failed")
        return whole(status, msg, log or body, _float(cases[0].get("time")))
    out = []
    for case in cases:
        name = case.get("name", "")
        classname = case.get("classname", "")
        out.append(
            _case_result(
                case,
                test_id=(classname + "." + name.split(" (")[0]) if classname else name,
                label=label,
                behaviour=behaviour,
                device=device,
                shard=shard,
                run=run,
                ws=ws,
                source=source,
                log_path=log_path,
            )
        )
    return out


def _case_result(case: ET.Element, test_id: str, **fields: Any) -> M.TestResult:
    """The TestResult of one JUnit ``testcase``; ``fields`` are its other TestResult fields."""
    name = case.get("name", "")
    method, api = M.split_api(name)
    status, msg, body = _case_status(case)
    return M.TestResult(
        method=method,
        api=api,
        status=status,
        raw_name=name,
        test_id=test_id,
        message=msg,
        text=tail(body),
        duration=_float(case.get("time")),
        **fields,
    )


def _junit_behaviour(classname: str, package: str) -> str:
    """fsdp.training.parity_test.ParityTest -> training/parity_test, as for Bazel."""
    parts = classname.split(".")
    if len(parts) >= 2 and parts[-1][:1].isupper():
        parts = parts[:-1]  # drop the test class
    if package and len(parts) > 1 and parts[0] == package:
        parts = parts[1:]
    return "/".join(parts) or "(unknown)"


def _junit_start(root: ET.Element) -> Optional[float]:
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


def parse_pytest_junit(path: str, device: str, package: str = "fsdp") -> M.Collected:
    """Reads pytest's --junitxml output from a host without Bazel.

    An environment.json beside the file (the harness writes one to
    FSDP_TEST_OUTPUT_DIR) describes that host's torch and devices.
    """
    out = M.Collected()
    out.inputs.append("pytest JUnit (%s): %s" % (device, path))
    label = "junit:" + os.path.basename(path)
    if not os.path.isfile(path):
        out.problems.append(M.Problem(path, "JUnit file not found"))
        return out
    try:
        root = ET.fromstring(_read_text(path))
    except ET.ParseError as e:
        out.problems.append(M.Problem(path, "malformed JUnit XML: %s" % e))
        return out
    for case in root.iter("testcase"):
        classname = case.get("classname", "")
        # The pytest plugin names items <method>[ws<N>]: one row, the size on the result.
        name, ws = not_run_records.split_world_size(case.get("name", ""))
        result = _case_result(
            case,
            test_id=classname + "." + name,
            label=label,
            behaviour=_junit_behaviour(classname, package),
            device=device,
            source=path,
            ws=ws,
        )
        if ws is not None:
            result.raw_name = name
            result.method, result.api = M.split_api(name)
        out.results.append(result)
    _add_pytest_not_run(out, root, path, label, device, package)
    if not out.results:
        out.problems.append(M.Problem(path, "JUnit XML has no test cases"))
    params_path = os.path.join(os.path.dirname(path), "test_params.json")
    if os.path.isfile(params_path):
        apply_case_params(
            out.results, read_case_params(_read_text(params_path), params_path, out.problems)
        )
    known_path = os.path.join(os.path.dirname(path), "known_failures.json")
    if os.path.isfile(known_path):
        started = _junit_start(root)
        if started is not None and os.path.getmtime(known_path) < started - 1:
            # Left by an earlier run in the same FSDP_TEST_OUTPUT_DIR: the harness
            # rewrites the file only when a known bug runs.
            out.problems.append(
                M.Problem(known_path, "older than the JUnit run it sits beside; ignored")
            )
        else:
            apply_known_failures(
                out.results, read_known_failures(_read_text(known_path), known_path, out.problems)
            )
    # The harness's rank logs, when pytest ran with FSDP_TEST_OUTPUT_DIR there.
    attach_rank_logs(out.results, Outputs(os.path.dirname(path), out.problems, subdir="rank_logs"))
    env_path = os.path.join(os.path.dirname(path), "environment.json")
    if os.path.isfile(env_path):
        try:
            env = json.loads(_read_text(env_path))
            if not isinstance(env, dict):
                raise ValueError("not a JSON object")
            out.environments.append((device, env, env_path))
        except ValueError as e:
            out.problems.append(M.Problem(env_path, "bad environment.json: %s" % e))
    return out


def _add_pytest_not_run(
    out: M.Collected, root: ET.Element, path: str, label: str, device: str, package: str
) -> None:
    """Adds the cases the pytest plugin left out of the run (not_run.json beside the XML)."""
    not_run_path = os.path.join(os.path.dirname(path), not_run_records.FILE_NAME)
    if not os.path.isfile(not_run_path):
        return
    started = _junit_start(root)
    if started is not None and os.path.getmtime(not_run_path) < started - 1:
        out.problems.append(
            M.Problem(not_run_path, "older than the JUnit run it sits beside; ignored")
        )
        return
    entries = not_run_records.read(_read_text(not_run_path), not_run_path, out.problems)
    # A case the harness itself found not to apply is in the XML already, as NOT_RUN.
    have = {(r.test_id, r.ws) for r in out.results}
    entries = [
        e for e in entries if ("%s.%s" % (e["classname"], e["method"]), e["world_size"]) not in have
    ]
    out.results.extend(
        not_run_records.results(
            entries,
            lambda classname: _junit_behaviour(classname, package),
            label=label,
            device=device,
            source=not_run_path,
        )
    )


def drop_stale(col: M.Collected) -> M.Collected:
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


# --------------------------------------------------------------------------
# Bazel testlogs.


def scan_testlogs(
    root: str, package: str = "fsdp", targets: Optional[Dict[str, M.TargetInfo]] = None
) -> M.Collected:
    """Reads a bazel-testlogs tree.

    A target's behaviour, device and world size come from `targets` (the query's
    tags); targets it does not list are named by parse_target_name.
    """
    targets = targets or {}
    out = M.Collected()
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
        pkg, target = "/".join(rel[:-1]), rel[-1]
        label = "//%s:%s" % (pkg, target)
        info = targets.get(label)
        if info is not None:
            behaviour, device, ws = info.behaviour, info.device, info.ws
        else:
            behaviour, device, ws = M.parse_target_name(target)
            behaviour = _behaviour_name(pkg, behaviour, package)
        xml_path = os.path.join(dirpath, "test.xml")
        log_path = os.path.join(dirpath, "test.log")
        log_path = log_path if os.path.exists(log_path) else ""
        common = dict(
            label=label,
            behaviour=behaviour,
            device=device,
            ws=ws,
            shard=shard,
            run=run,
            log_path=log_path,
        )
        if n_shards:
            entry = shard_seen.setdefault((label, run), (n_shards, set(), common))
            entry[1].add(int(shard.split("/")[0]))
        if "test.xml" not in filenames:
            out.problems.append(M.Problem(dirpath, "test.log without test.xml"))
            results = [
                M.TestResult(
                    method=None,
                    status=M.NO_RESULT,
                    message="no test.xml (see test.log)",
                    text=tail(_read_text(log_path)),
                    source=dirpath,
                    raw_name=label,
                    **common,
                )
            ]
        else:
            results = parse_bazel_xml(
                _read_text(xml_path),
                source=xml_path,
                bazel_name=pkg + "/" + target,
                problems=out.problems,
                **common,
            )
        outputs = Outputs(dirpath, out.problems)
        apply_case_params(
            results, read_case_params(outputs.read("test_params.json"), dirpath, out.problems)
        )
        apply_known_failures(
            results, read_known_failures(outputs.read("known_failures.json"), dirpath, out.problems)
        )
        not_run_records.apply(
            results,
            not_run_records.read(outputs.read(not_run_records.FILE_NAME), dirpath, out.problems),
        )
        attach_rank_logs(results, outputs)
        env = read_environment(outputs, dirpath, out.problems)
        if env is not None:
            out.environments.append((device, env, label))
        out.results.extend(results)
    for (label, run), (n, seen, common) in sorted(shard_seen.items()):
        for i in range(1, n + 1):
            if i not in seen:
                c = dict(common, shard="%d/%d" % (i, n), run=run)
                where = "%s shard %d/%d%s" % (label, i, n, " run " + run if run else "")
                out.problems.append(M.Problem(where, "shard has no result directory"))
                out.results.append(
                    M.TestResult(
                        method=None,
                        status=M.NO_RESULT,
                        raw_name=label,
                        source=root,
                        message="shard %d of %d has no result" % (i, n),
                        **c,
                    )
                )
    return out
