"""The Starlark device table Bazel uses is testing/devices.py's, and .bazelrc follows it.

Passes when the table tools/devices.bzl hands to the macros (generated into
@fsdp_devices from testing/devices.py) names the same devices as testing/devices.py,
with the same tag, accelerator flag, visibility variable, environment prefixes and
names, interoperable tags, size and shard count, and the same multi-device tag, and
when `.bazelrc` has for each device a `test:<device>` config whose
`--test_tag_filters` selects exactly that device's tag less `large`, and a `large`
config that leaves out every accelerator's tag. A stale or wrong generator
fails the first part; each mismatch is reported with the device, the field and both
values.
"""

import json
import os
import re

from absl.testing import absltest

import device_table  # tools/device_table.py, beside this file

# Loaded as every tool loads it: importing the `testing` package would import torch
# (seconds) for a table that needs none.
devices = device_table.load()

# Written by //tools:devices_table from tools/devices.bzl's DEVICES.
_STARLARK_JSON = os.path.join("tools", "devices_table.json")
_BAZELRC = ".bazelrc"
# The config of the targets the default run leaves out (tools/defs.bzl tags them).
_LARGE = "large"
_TAG_FILTER = re.compile(r"^test:(\S+)\s+--test_tag_filters=(\S+)\s*$")


def _starlark_table() -> dict:
    with open(_STARLARK_JSON) as f:
        return json.load(f)


def _python_fields(kind) -> dict:
    return {
        field: (list(value) if isinstance(value, tuple) else value)
        for field in device_table.STARLARK_FIELDS
        for value in [getattr(kind, field)]
    }


def _bazelrc_tag_filters() -> dict:
    """{config: tag filter} of the `test:<config> --test_tag_filters=...` lines."""
    filters = {}
    with open(_BAZELRC) as f:
        for line in f:
            m = _TAG_FILTER.match(line.strip())
            if m:
                filters[m.group(1)] = m.group(2)
    return filters


class DeviceTableTest(absltest.TestCase):
    def test_same_devices(self):
        starlark = sorted(_starlark_table()["devices"])
        self.assertEqual(
            starlark,
            sorted(devices.DEVICES),
            f"devices in @fsdp_devices (tools/devices.bzl): {starlark}; in testing/devices.py: "
            f"{sorted(devices.DEVICES)}",
        )

    def test_shared_fields_agree(self):
        table = _starlark_table()["devices"]
        mismatches = []
        for name, kind in devices.DEVICES.items():
            starlark = table.get(name, {})
            for field, value in _python_fields(kind).items():
                if starlark.get(field) != value:
                    mismatches.append(
                        f"{name}.{field}: @fsdp_devices (tools/devices.bzl) has "
                        f"{starlark.get(field)!r}, testing/devices.py {value!r}"
                    )
        self.assertEmpty(
            mismatches,
            "the generated device table disagrees with testing/devices.py:\n"
            + "\n".join(mismatches),
        )

    def test_multi_device_tag_agrees(self):
        self.assertEqual(_starlark_table()["multi_device_tag"], devices.MULTI_DEVICE_TAG)

    def test_bazelrc_has_a_config_per_device(self):
        filters = _bazelrc_tag_filters()
        problems = []
        for name, kind in devices.DEVICES.items():
            if filters.get(name) != f"{kind.tag},-large":
                problems.append(
                    f"test:{name} --test_tag_filters is {filters.get(name)!r}, "
                    f"expected '{kind.tag},-large'"
                )
        for config in sorted(set(filters) - set(devices.DEVICES) - {_LARGE}):
            problems.append(f"test:{config} filters tags but {config} is not a device")
        self.assertEmpty(problems, ".bazelrc device configs:\n" + "\n".join(problems))

    def test_large_config_leaves_every_accelerator_out(self):
        # A positive tag selects across devices: the large config must exclude every
        # accelerator's tag, or a CPU-only CI would run (and fail) their large targets.
        accelerators = sorted(k.tag for k in devices.DEVICES.values() if k.accelerator)
        expected = ",".join([_LARGE] + [f"-{tag}" for tag in accelerators])
        self.assertEqual(_bazelrc_tag_filters().get(_LARGE), expected)


if __name__ == "__main__":
    absltest.main()
