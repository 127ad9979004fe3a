"""Names: targets and test methods read as behaviour, device, world size and API.

Devices come from the suite's device table (tools/device_table.py, which needs no
torch, nor does this tool).
"""

import re
from typing import List, Optional, Tuple

from tools import device_table

_DEVICE_TABLE = device_table.load().DEVICES

# Device columns, in the device table's order.
KNOWN_DEVICES = tuple(_DEVICE_TABLE)
KNOWN_APIS = ("fsdp1", "fsdp2")
# Bazel device tags -> device column.
TAG_TO_DEVICE = {kind.tag: name for name, kind in _DEVICE_TABLE.items()}

_WS_TAG_RE = re.compile(r"^ws(\d+)$")
# Only for targets that no `bazel query` describes (see target_metadata).
_TARGET_RE = re.compile(
    r"^(?P<behaviour>.+?)_(?P<device>%s)(?:_ws(?P<ws>\d+))?$"
    % "|".join(map(re.escape, KNOWN_DEVICES))
)
_API_RE = re.compile(r"(?<![A-Za-z0-9])fsdp([12])(?![0-9])", re.IGNORECASE)


def target_metadata(name: str, tags=(), generator_name: str = "") -> Tuple[str, str, Optional[int]]:
    """(behaviour, device, world size) of a test target, from `bazel query`.

    fsdp_test tags each target with its device's tag and `ws<N>`, and Bazel
    records the macro's `name` (the behaviour) as the target's `generator_name`.
    A target without exactly one device tag falls back to parse_target_name.
    """
    devices = sorted({TAG_TO_DEVICE[t] for t in tags if t in TAG_TO_DEVICE})
    if len(devices) != 1:
        return parse_target_name(name)
    sizes = [int(m.group(1)) for m in map(_WS_TAG_RE.match, tags) if m]
    ws = sizes[0] if len(sizes) == 1 else None
    return generator_name or parse_target_name(name)[0], devices[0], ws


def parse_target_name(name: str) -> Tuple[str, str, Optional[int]]:
    """`multiple_forward_test_cpu_ws4` -> ('multiple_forward_test', 'cpu', 4).

    Only for results whose target no query describes (no --query_xml and no
    tools/bazel, e.g. testlogs copied from another machine, and the committed
    fixtures under tests/testdata/broken): fsdp_test names targets
    `<name>_<device>[_ws<N>]`. Unknown names get the device "other".
    """
    m = _TARGET_RE.match(name)
    if m:
        ws = int(m.group("ws")) if m.group("ws") else None
        return m.group("behaviour"), m.group("device"), ws
    return name, "other", None


def split_api(name: str, api: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """(row name, API) of a test method.

    `api` is the method's `api` parameter as the harness recorded it
    (test_params.json). Without one, the API is the fsdp1/fsdp2 token of the
    name: for methods that fix the API in their body, and for results without
    test_params.json (runs before the harness wrote it, the committed fixtures).
    Either way the row name loses the API token, so the API cases of a method
    share a row:

    test_matches_ddp_fsdp2                -> ('test_matches_ddp', 'fsdp2')
    test_fsdp1_state_dict                 -> ('test_state_dict', 'fsdp1')
    test_prod0 (api='fsdp1', reshard=True) -> ('test_prod (reshard=True)', 'fsdp1')
    test_plain1 ('fsdp2')                 -> ('test_plain', 'fsdp2')
    test_x[fsdp1-bf16]  (pytest)          -> ('test_x[bf16]', 'fsdp1')
    """
    name = name.strip()
    base, params, bracket = name, "", ""
    m = re.match(r"^(\S+?)\s+\((.*)\)\s*$", name, re.S)
    if m:
        base, params = m.group(1), m.group(2)
    else:
        m = re.match(r"^([^\[]+)\[(.*)\]$", name, re.S)
        if m:
            base, bracket = m.group(1), m.group(2)
    if api is None:
        apis = [a.lower() for a in _API_RE.findall(name)]
        api = ("fsdp" + apis[0]) if apis and len(set(apis)) == 1 else None
    # Strip the API token from the method name itself.
    parts = base.split("_")
    kept = [p for p in parts if not _API_RE.fullmatch(p)]
    if api and len(kept) != len(parts):
        base = "_".join(kept)
    if params:
        # absl numbers parameterized cases (test_x0, test_x1); the parameters
        # say what the case is, so drop the index.
        base = re.sub(r"\d+$", "", base) or base
        items = [p.strip() for p in _split_params(params)]
        if api:
            items = [p for p in items if not _API_RE.search(p)]
        items = [p for p in items if p]
        base = base + (" (%s)" % ", ".join(items) if items else "")
    if bracket:
        items = bracket.split("-")
        if api:
            items = [p for p in items if not _API_RE.search(p)]
        base = base + ("[%s]" % "-".join(items) if items else "")
    return base, api


def _split_params(text: str) -> List[str]:
    """Splits 'a=1, b=(2, 3), c' at top-level commas."""
    out, depth, cur, quote = [], 0, [], ""
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur))
    return out


def order(values, known) -> List[str]:
    """``values`` in the order of ``known``, then the rest in natural order."""
    values = set(values)
    head = [v for v in known if v in values]
    # Numbers by value, so that a "cpu · torch 2.9.1" column comes before "... 2.10.0".
    return head + sorted(values - set(head), key=natural_key)


def natural_key(text: str) -> Tuple:
    """Sort key that orders the numbers in ``text`` by value: 2.9 < 2.10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text))


def behaviour_name(pkg: str, behaviour: str, package: str) -> str:
    """Targets in sub-packages of //fsdp keep their sub-path in the row name."""
    if package and pkg.startswith(package + "/"):
        return pkg[len(package) + 1 :] + "/" + behaviour
    if not package and pkg:
        return pkg + "/" + behaviour
    return behaviour
