"""Says, before a device test run starts, how many selected targets the host cannot run.

tools/bazel runs this for `test` with --config=cuda|hpu|xpu when it knows the device
count. A target tagged `ws<N>` needs N devices of its own; on a host with fewer it fails
(loudly, one line each: the failures themselves are not hidden). This prints, first, one
line with how many of the selected targets that will be and the one flag that selects the
rest (tools/bazel prints it on stderr), e.g. on a 1-GPU host:

    tools/bazel: 55 of 56 selected cuda targets need more devices than the 1 this host has
    and will fail; to run only the rest: --test_tag_filters=gpu,-requires-multi-device

The selection is asked of Bazel itself (`query tests(<patterns>) --output=xml`, in the
same server and with the same --repo_env flags, so nothing is reloaded or refetched for
the run that follows) and filtered as `bazel test` filters it: --test_tag_filters (the
config's device tag unless given), `manual` targets dropped unless named. Anything it
cannot work out (a failing query, no patterns) prints nothing: Bazel then reports its own
errors. Usage:

    device_shortfall.py BAZEL DEVICE COUNT -- STARTUP_OPTIONS... -- COMMAND ARGS...
"""

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple

import device_table

ME = "tools/bazel"
MULTI_DEVICE_TAG = "requires-multi-device"  # tools/devices.bzl: accelerator targets, ws > 1

# Options whose value may follow as the next word (`--config cuda`); that word is not a
# target pattern. Boolean options never take the next word.
VALUE_OPTIONS = frozenset(
    "action_env build_tag_filters config define jobs local_test_jobs repo_env run_under "
    "runs_per_test test_arg test_env test_filter test_output test_size_filters "
    "test_tag_filters test_timeout test_timeout_filters".split()
)
# Options the query must share with the run, or the repositories they feed are refetched.
SHARED_OPTIONS = ("repo_env",)
_WILDCARD = re.compile(r"(\.\.\.|:all|:\*|:all-targets)$")
_WS_TAG = re.compile(r"^ws(\d+)$")


class Args(NamedTuple):
    """What the command line says about the selection."""

    patterns: List[str]  # in order; a leading "-" subtracts
    tag_filters: Optional[str]  # the last --test_tag_filters, None if not given
    shared: List[str]  # options the query repeats (--repo_env=...)


def parse_args(args: Sequence[str]) -> Args:
    """Splits the words after the command into target patterns and options."""
    patterns, shared, tag_filters = [], [], None
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            patterns.extend(args[i + 1 :])
            break
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            if not eq and name in VALUE_OPTIONS and i + 1 < len(args):
                i, value = i + 1, args[i + 1]
            if name == "test_tag_filters":
                tag_filters = value
            if name in SHARED_OPTIONS:
                shared.append(f"--{name}={value}")
        elif not word.startswith("-"):
            patterns.append(word)
        i += 1
    return Args(patterns, tag_filters, shared)


def query_expression(patterns: Sequence[str]) -> Optional[str]:
    """tests(a + b - c) for the patterns; None when none adds targets."""
    terms = []
    for p in patterns:
        if p.startswith("-"):
            if terms:
                terms.append(f'- "{p[1:]}"')
        else:
            terms.append(f'+ "{p}"' if terms else f'"{p}"')
    return f"tests({' '.join(terms)})" if terms else None


def tag_filter_matches(tags: Iterable[str], tag_filters: str) -> bool:
    """--test_tag_filters semantics: one positive tag (if any is given), no negative tag."""
    tags = set(tags)
    wanted = [t for t in tag_filters.split(",") if t and not t.startswith("-")]
    unwanted = [t[1:] for t in tag_filters.split(",") if t.startswith("-")]
    return (not wanted or bool(tags & set(wanted))) and not tags & set(unwanted)


def selected_targets(xml_text: str, patterns: Sequence[str], tag_filters: str):
    """(label, tags) of the test rules `bazel test` would run, from query's XML."""
    named = {p if p.startswith(("//", "@")) else "//" + p for p in patterns}
    for rule in ET.fromstring(xml_text).iter("rule"):
        label = rule.get("name")
        tags = [s.get("value") for lst in rule.findall("list[@name='tags']") for s in lst]
        if "manual" in tags and label not in named:
            continue
        if tag_filter_matches(tags, tag_filters):
            yield label, tags


def needed_devices(tags: Iterable[str]) -> int:
    """The N of the target's ws<N> tag (1 when it has none)."""
    sizes = [int(m.group(1)) for m in map(_WS_TAG.match, tags) if m]
    return max(sizes, default=1)


def note(device: str, count: int, tag_filters: str, targets) -> Optional[str]:
    """The line to print, or None when every selected target fits the host."""
    targets = list(targets)
    short = sorted({needed_devices(tags) for _, tags in targets} - set(range(count + 1)))
    if not short:
        return None
    too_big = sum(needed_devices(tags) > count for _, tags in targets)
    head = (
        f"{ME}: {too_big} of {len(targets)} selected {device} targets need more devices "
        f"than the {count} this host has and will fail"
    )
    if count == 0 or too_big == len(targets):
        return head + "; none of them can run here"
    excluded = [MULTI_DEVICE_TAG] if count == 1 else [f"ws{n}" for n in short]
    flag = ",".join([tag_filters] + ["-" + t for t in excluded])
    return f"{head}; to run only the rest: --test_tag_filters={flag}"


def split_command(words: Sequence[str]) -> Tuple[List[str], List[str]]:
    """STARTUP... -- COMMAND ARGS... -> (startup options, words after the command)."""
    sep = list(words).index("--")
    return list(words[:sep]), list(words[sep + 2 :])


def main(argv: Sequence[str]) -> int:
    """Prints the note (if any); always exits 0 (a note must never stop a run)."""
    bazel, device, count = argv[1], argv[2], int(argv[3])
    startup, rest = split_command(argv[5:])
    parsed = parse_args(rest)
    expression = query_expression(parsed.patterns)
    if expression is None:
        return 0
    tag_filters = parsed.tag_filters
    if tag_filters is None:
        tag_filters = device_table.load().DEVICES[device].tag
    cmd = [bazel, *startup, "query", expression, "--output=xml", "--noshow_progress"]
    proc = subprocess.run(
        cmd + ["--keep_going"] + parsed.shared, capture_output=True, text=True, check=False
    )
    if proc.returncode not in (0, 3) or not proc.stdout.strip():
        return 0
    try:
        targets = list(selected_targets(proc.stdout, parsed.patterns, tag_filters))
    except ET.ParseError:
        return 0
    line = note(device, count, tag_filters, targets)
    if line:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
