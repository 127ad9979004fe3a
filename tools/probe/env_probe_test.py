"""Probe of the environment pass-through: `tools/bazel test //tools/probe:env_probe_test`.

Pass criterion: every variable that tools/bazel says it forwarded (the names in
FSDP_PASSED_ENV) is present in the test's environment with a value; the test fails
when pass-through is off (FSDP_PASSED_ENV unset), so a run that forwarded nothing
cannot pass. It prints each forwarded NAME=value, and CUDA_VISIBLE_DEVICES and
FSDP_DEVICE_LEASE as the device wrapper left them, so a run's log shows what
reached the test.
"""

import os
import sys
import unittest


class EnvProbeTest(unittest.TestCase):
    """The forwarded variables reach the test."""

    def test_forwarded_variables_arrive(self):
        names = os.environ.get("FSDP_PASSED_ENV")
        self.assertIsNotNone(
            names,
            "FSDP_PASSED_ENV is unset: run through tools/bazel with a device config "
            "or FSDP_PASS_ENV=1",
        )
        missing = [n for n in names.split(",") if n and n not in os.environ]
        for name in sorted(n for n in names.split(",") if n in os.environ):
            print(f"env_probe: {name}={os.environ[name]}")
        for name in ("CUDA_VISIBLE_DEVICES", "FSDP_DEVICE_LEASE"):
            print(f"env_probe: at test start {name}={os.environ.get(name, '(unset)')}")
        self.assertEqual(
            missing,
            [],
            f"forwarded by tools/bazel but absent in the test: {missing} (FSDP_PASSED_ENV={names})",
        )


if __name__ == "__main__":
    # --device/--world_size are for tools/device_lease (see BUILD.bazel), not unittest.
    unittest.main(argv=sys.argv[:1])
