"""Words and short forms both renderers show: durations, captions, environments."""

from typing import Dict, Optional

from tools.report.matrix import Report


def hardware_summary(env: dict) -> str:
    """'2× NVIDIA H200' from an environment.json's device names (or its device)."""
    counted: Dict[str, int] = {}
    for n in env.get("device_names") or []:
        counted[n] = counted.get(n, 0) + 1
    return ", ".join("%d\u00d7 %s" % (c, n) if c > 1 else n for n, c in counted.items()) or str(
        env.get("device", "")
    )


def environment_world_sizes(env: dict) -> str:
    """'2, 4': the world sizes an environment's results ran at, ascending."""
    return ", ".join(
        str(w) for w in sorted(w for w in env.get("_world_sizes", ()) if w is not None)
    )


def missing_environment_reason(report: Report, dev: str) -> str:
    """Why the environment table has no row for ``dev``."""
    if dev in report.ran_devices:
        return "no environment.json found"
    return "no results for this device"


def fmt_duration(sec: Optional[float]) -> str:
    """A duration in seconds as a short string (1.23s, 12.3s, 2m05s)."""
    if sec is None:
        return ""
    if sec < 10:
        return "%.2fs" % sec
    if sec < 60:
        return "%.1fs" % sec
    return "%dm%02ds" % (sec // 60, sec % 60)


def shorten(text: str, n: int) -> str:
    """`text` on one line, cut to `n` characters with an ellipsis."""
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def column_heading(api: str) -> str:
    """The heading of an API column."""
    return api or "all APIs"


def device_caption(report: Report, dev: str) -> str:
    """A device column's caption: its hardware and count, from the environments."""
    envs = report.environments.get(dev) or []
    bits = []
    for env, _ in envs[:2]:
        names = [n for n in env.get("device_names") or [] if n != dev]
        count = env.get("device_count")
        if names:
            first = names[0]
            n = count if isinstance(count, int) else len(names)
            bits.append("%s\u00d7 %s" % (n, first) if n and n > 1 else first)
        elif count:
            bits.append("%s device(s)" % count)
    return "; ".join(bits)
