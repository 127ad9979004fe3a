"""The target list: `bazel query --output=xml`, run or read, as TargetInfo records."""

import os
import subprocess
import xml.etree.ElementTree as ET
from typing import List, Optional, Tuple

from tools.report.collected import Collected, Problem, TargetInfo
from tools.report.names import KNOWN_APIS, behaviour_name, target_metadata


def parse_query_xml(text: str, source: str, package: str = "fsdp") -> Collected:
    """Targets (device, world size, API, disabled reason) from `bazel query --output=xml`."""
    out = Collected()
    out.inputs.append("targets: " + source)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        out.problems.append(Problem(source, "cannot parse query XML: %s" % e))
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
        behaviour, device, ws = target_metadata(name, tags, generator)
        behaviour = behaviour_name(pkg, behaviour, package)
        reasons = [t.split(":", 1)[1].strip() for t in tags if t.startswith("disabled:")]
        out.targets[label] = TargetInfo(
            label,
            behaviour,
            device,
            ws,
            apis=tuple(a for a in KNOWN_APIS if a in tags),
            tags=tuple(tags),
            disabled="disabled" in tags or bool(reasons),
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
