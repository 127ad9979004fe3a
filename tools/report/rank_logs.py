"""Per-rank logs: each failing test's section of every rank's log, put into its result."""

import re
from typing import Dict, List, Tuple

from tools.report.collected import TestResult
from tools.report.files import Outputs, tail
from tools.report.status import NEEDS_DETAIL

_SECTION_RE = re.compile(r"^==== (.+?) ====\s*$")


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


def attach_rank_logs(results: List[TestResult], outputs: Outputs) -> None:
    """Puts each failing test's section of every rank log into the result."""
    failing = [r for r in results if r.status in NEEDS_DETAIL]
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
