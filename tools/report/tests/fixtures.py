"""Fixtures of the report's self-tests: the testdata/ trees and helpers that run the
CLI and read its HTML and Markdown.

testdata/query.xml  bazel query --output=xml of a small //fsdp suite (one target
                    disabled with a reason, one API-specific target never run)
testdata/cpu/       testlogs of a CPU run: all pass, a sharded _ws4 target,
                    rank logs and environment.json as plain files
testdata/cuda/      testlogs of a CUDA run: one failure, rank logs and
                    environment.json inside test.outputs/outputs.zip
testdata/broken/    malformed / missing / empty XML, a crash (Bazel's own
                    test.xml), a missing shard, a flaky --runs_per_test target,
                    a corrupt outputs.zip, a bad environment.json, and a
                    target outside //fsdp
testdata/pytest_xpu/  pytest --junitxml from a host without Bazel, cases.json beside it
Every result directory has the harness's cases.json (testing/case_params.py), except
where a test says it has none; the broken/ tree has its own query.xml.
testdata/known_bugs/     testlogs with known torch bugs (known_bug in cases.json):
                    precision/unfreeze_test_cpu from a real absl run (expected
                    failure written as a pass; a made-up bug on the FSDP1 case
                    that did not reproduce), outputs in outputs.zip;
                    no_sync_test_cpu hand-written, plain test.outputs/: a
                    --known_failures=strict failure and a pass on a release
                    outside the bug's range
testdata/pytest_known_bugs/  the same unfreeze run through pytest (xfail, and
                    "Unexpected success"), with cases.json beside it
NotRunTest writes its own small fixtures (cases.json under Bazel and beside JUnit).
"""

import contextlib
import io
import json
import os
import re
import shutil
import tempfile

from tools.report import report

_HERE = os.path.dirname(os.path.abspath(__file__))
TOOL = os.path.dirname(_HERE)

DATA = os.path.join(_HERE, "testdata")
CPU = os.path.join(DATA, "cpu")
CUDA = os.path.join(DATA, "cuda")
BROKEN = os.path.join(DATA, "broken")
QUERY = os.path.join(DATA, "query.xml")
JUNIT = os.path.join(DATA, "pytest_xpu", "pytest_xpu.xml")
KNOWN = os.path.join(DATA, "known_bugs")
KNOWN_JUNIT = os.path.join(DATA, "pytest_known_bugs", "results.xml")
UNFREEZE = "test_unfrozen_unit_keeps_reduce_dtype"


def write_file(path, text):
    """Writes ``text`` to ``path``."""
    with open(path, "w") as f:
        f.write(text)


def case_record(classname, method, name, api, world_size=2, device="cpu", **fields):
    """One case's record as the harness writes it to cases.json (testing/case_params.py)."""
    record = {
        "test_id": "%s.%s" % (classname.rsplit(".", 1)[-1], method),
        "classname": classname,
        "method": method,
        "file": fields.pop("file", "fsdp/x_test.py"),
        "name": name,
        "device": device,
        "world_size": world_size,
        "api": api,
        "params": {},
        "known_bug": None,
        "not_run": None,
    }
    record.update(fields)
    return record


def write_cases(directory, *records):
    """Writes ``records`` (from case_record) to ``<directory>/cases.json``."""
    os.makedirs(directory, exist_ok=True)
    write_file(os.path.join(directory, "cases.json"), json.dumps({"cases": list(records)}))


def bazel_target(root, target, xml, *records):
    """A result directory ``<root>/fsdp/<target>`` with ``xml`` as test.xml and ``records``
    (from case_record) as its cases.json; returns the directory."""
    path = os.path.join(root, "fsdp", target)
    write_cases(os.path.join(path, "test.outputs"), *records)
    write_file(os.path.join(path, "test.xml"), xml)
    return path


def run_cli(*args):
    """Runs report.main in-process; returns (exit code, stdout, html, md)."""
    out = tempfile.mkdtemp()
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        try:
            rc = report.main(list(args) + ["--out", out, "--no_bazel_query"])
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    html_text = md_text = ""
    if os.path.exists(os.path.join(out, "report.html")):
        with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
            html_text = f.read()
        with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
            md_text = f.read()
    shutil.rmtree(out)
    return rc, buf.getvalue() + err.getvalue(), html_text, md_text


def html_cells(html_text, row_method):
    """The <td> cells of the first matrix row whose heading is row_method."""
    m = re.search(
        r'<th class="rowhead mono">%s</th>(.*?)</tr>' % re.escape(row_method), html_text, re.S
    )
    assert m, "row %r not in HTML" % row_method
    return re.findall(r"<td [^>]*>.*?</td>", m.group(1), re.S)


def section(html_text, anchor):
    """The detail section with id ``anchor``."""
    m = re.search(r'<section class="detail" id="%s">(.*?)</section>' % anchor, html_text, re.S)
    assert m, "no detail section %s" % anchor
    return m.group(1)


def md_row(md_text, row_method):
    """The Markdown matrix cells of the row whose heading is ``row_method``."""
    for line in md_text.splitlines():
        if line.startswith("| &nbsp;&nbsp;`%s`" % row_method):
            return [c.strip() for c in line.strip("|").split(" | ")][1:]
    raise AssertionError("row %r not in Markdown" % row_method)


def cell_status(cell_html):
    """The status class (``st-pass`` ...) of one HTML cell."""
    return re.search(r'class="cell (st-[\w-]+)', cell_html).group(1)
