#!/usr/bin/env python3
"""The one loader of the device table (testing/devices.py) for the suite's tools.

Importing the `testing` package checks for torch, but the tools run under the system
python3 (tools/bazel, tools/device_lease.py, tools/remote) or use the standard library
only (tools/report). testing/devices.py needs nothing else at import time, so this
module loads it by path:

    sys.path.append(<this directory>)  # append: tools/ holds packages named report, remote
    import device_table
    DEVICES = device_table.load().DEVICES

As a command it prints what other languages need from the table:

    device_table.py starlark [--table PATH]  the Starlark table (@fsdp_devices//:devices.bzl)
    device_table.py env KIND                  KIND's visibility variable, then the shell
                                              patterns of the host variables it relies on
                                              (KIND "": every accelerator's)
    device_table.py count KIND                how many KIND devices this host offers, or
                                              nothing when it cannot tell

Bad input gets one line on stderr and exit status 2.
"""

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from typing import Iterable, List

_DEFAULT_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "testing", "devices.py"
)
_NAME = "fsdp_device_table"
ME = "device_table"

# Fields of the Starlark table, in the order tools/devices.bzl documents them.
STARLARK_FIELDS = (
    "tag",
    "accelerator",
    "visible_devices_env",
    "env_prefixes",
    "env_vars",
    "interop_tags",
    "size",
    "shard_count",
    "large_world_size",
)


class TableError(Exception):
    """The table cannot answer: an unknown device, or no way to count its devices."""


def load(path: str = _DEFAULT_PATH):
    """Returns testing/devices.py (or the table at `path`) as a module, loaded once."""
    if _NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(_NAME, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module  # dataclasses looks the module up by name
        spec.loader.exec_module(module)
    return sys.modules[_NAME]


def kind(name: str):
    """Returns the DeviceKind called `name`; raises TableError naming the choices."""
    try:
        return load().get(name)
    except ValueError as e:
        raise TableError(str(e)) from None


def listed_count(name: str) -> int:
    """Counts the `name` devices the vendor's listing tool shows (no runtime started).

    Raises TableError when the device has no listing tool or the tool fails.
    """
    device = kind(name)
    if not device.list_command:
        raise TableError(f"no tool to count {name} devices")
    command = list(device.list_command)
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise TableError(f"`{' '.join(command)}` failed: {e}") from None
    return sum(1 for line in out.splitlines() if re.match(device.list_line, line))


def _starlark_value(value) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)  # Strings, ints and lists of strings read the same in Starlark.


def starlark(module) -> str:
    """Returns the Starlark text of the table in `module` (a loaded testing/devices.py)."""
    lines = [
        '"""The device table for Starlark, generated from testing/devices.py: do not edit.',
        "",
        "tools/devices_repository.bzl writes it; tools/devices.bzl documents the fields.",
        '"""',
        "",
        f"MULTI_DEVICE_TAG = {_starlark_value(module.MULTI_DEVICE_TAG)}",
        "",
        "DEVICES = {",
    ]
    for name, device in module.DEVICES.items():
        lines.append(f"    {_starlark_value(name)}: struct(")
        for field in STARLARK_FIELDS:
            lines.append(f"        {field} = {_starlark_value(getattr(device, field))},")
        lines.append("    ),")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _accelerators(name: str) -> List:
    if name:
        return [kind(name)] if kind(name).accelerator else []
    return [k for k in load().DEVICES.values() if k.accelerator]


def env_lines(name: str) -> Iterable[str]:
    """The `env` command's two lines: visibility variables, then host variable patterns."""
    kinds = _accelerators(name)
    yield " ".join(k.visible_devices_env for k in kinds)
    patterns = {p + "*" for k in kinds for p in k.env_prefixes}
    patterns |= {v for k in kinds for v in (k.visible_devices_env,) + k.env_vars if v}
    yield " ".join(sorted(patterns))


def host_count(name: str) -> str:
    """The `count` command: FSDP_DEVICE_COUNT, else the entries of the visibility
    variable, else what the listing tool shows; "" when none of them tells."""
    if os.environ.get("FSDP_DEVICE_COUNT"):
        return os.environ["FSDP_DEVICE_COUNT"]
    device = kind(name)
    visible = os.environ.get(device.visible_devices_env, "") if device.visible_devices_env else ""
    if visible:
        return str(sum(1 for entry in visible.split(",") if entry.strip()))
    try:
        return str(listed_count(name))
    except TableError:
        return ""


def main(argv=None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog=ME, description="Prints facts of the device table.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("starlark", help="the Starlark table")
    gen.add_argument("--table", default=_DEFAULT_PATH, help="path of testing/devices.py")
    commands.add_parser("env", help="visibility variable, host patterns").add_argument("kind")
    commands.add_parser("count", help="devices on this host").add_argument("kind")
    args = parser.parse_args(argv)
    try:
        if args.command == "starlark":
            sys.stdout.write(starlark(load(args.table)))
        elif args.command == "env":
            print("\n".join(env_lines(args.kind)))
        else:
            print(host_count(args.kind))
    except TableError as e:
        print(f"{ME}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
