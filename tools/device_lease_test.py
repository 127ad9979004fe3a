"""Tests of tools/device_lease.py, the device-packing --run_under wrapper, on CPU.

Pass criterion: with 8 simulated devices (FSDP_DEVICE_COUNT=8), six world-size-2 jobs
started together run at most 4 at a time, at least 4 overlap (they are packed, not
serialized), and jobs that overlap in time hold disjoint device sets of size 2; with a
host allocation of 2 of 8 (CUDA_VISIBLE_DEVICES=3,6) every job gets devices from {3, 6}
only, and world-size-1 jobs then run at most 2 at a time; pytest's `--world-size=2` is
read like `--world_size=2`; a CPU test and a test with fewer candidate devices than its
world size run with their environment unchanged.
Each job is the wrapper exec'ing a small recorder that holds its lease for about a
second and writes the devices it was given and when it ran.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

WRAPPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "device_lease.py")

# Runs under the wrapper: records what it was given, holding the lease ~1 s.
RECORDER = textwrap.dedent("""\
    import json, os, sys, time
    start = time.time()
    time.sleep(float(os.environ.get("HOLD_S", "1.0")))
    with open(sys.argv[1], "w") as f:
        json.dump({"visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "lease": os.environ.get("FSDP_DEVICE_LEASE"),
                   "start": start, "end": time.time()}, f)
    """)


class DeviceLeaseTest(unittest.TestCase):
    """The wrapper packs jobs onto disjoint devices and respects host allocations."""

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        self.recorder = os.path.join(self.tmp, "recorder.py")
        with open(self.recorder, "w") as f:
            f.write(RECORDER)

    def _run_jobs(self, count, device_args, **env):
        """Starts `count` wrapped recorders at once; returns their records."""
        base = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        base["FSDP_DEVICE_LOCK_DIR"] = os.path.join(self.tmp, "locks")
        base.update(env)
        procs, outs = [], []
        for i in range(count):
            out = os.path.join(self.tmp, f"job{i}.json")
            outs.append(out)
            procs.append(
                subprocess.Popen(
                    [sys.executable, WRAPPER, sys.executable, self.recorder, out] + device_args,
                    env=base,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for i, proc in enumerate(procs):
            _, err = proc.communicate(timeout=120)
            self.assertEqual(proc.returncode, 0, f"job {i} failed: {err}")
        records = []
        for out in outs:
            with open(out) as f:
                records.append(json.load(f))
        return records

    def _max_overlap(self, records):
        events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
        running = peak = 0
        for _, step in events:
            running += step
            peak = max(peak, running)
        return peak

    def _assert_disjoint_while_overlapping(self, records):
        for i, a in enumerate(records):
            for b in records[i + 1 :]:
                if a["start"] < b["end"] and b["start"] < a["end"]:
                    shared = set(a["visible"].split(",")) & set(b["visible"].split(","))
                    self.assertFalse(
                        shared,
                        f"jobs overlapping in time share devices {sorted(shared)}: "
                        f"{a['visible']} ({a['start']:.2f}-{a['end']:.2f}) and "
                        f"{b['visible']} ({b['start']:.2f}-{b['end']:.2f})",
                    )

    def test_eight_devices_pack_four_world_size_2_jobs(self):
        records = self._run_jobs(6, ["--device=cuda", "--world_size=2"], FSDP_DEVICE_COUNT="8")
        for r in records:
            devices = r["visible"].split(",")
            self.assertEqual(len(devices), 2, f"a ws2 job got {r['visible']}")
            self.assertTrue(set(devices) <= {str(i) for i in range(8)}, r["visible"])
            self.assertEqual(r["lease"], "cuda:" + r["visible"])
        self._assert_disjoint_while_overlapping(records)
        peak = self._max_overlap(records)
        self.assertLessEqual(peak, 4, f"{peak} ws2 jobs ran at once on 8 devices")
        self.assertEqual(peak, 4, f"only {peak} ws2 jobs ran at once on 8 devices: not packed")

    def test_host_allocation_is_respected(self):
        records = self._run_jobs(
            2,
            ["--device=cuda", "--world_size=2"],
            FSDP_DEVICE_COUNT="8",
            CUDA_VISIBLE_DEVICES="3,6",
        )
        for r in records:
            self.assertEqual(
                sorted(r["visible"].split(",")),
                ["3", "6"],
                f"a ws2 job under CUDA_VISIBLE_DEVICES=3,6 got {r['visible']}",
            )
        self.assertEqual(self._max_overlap(records), 1, "two ws2 jobs shared devices 3,6")

        records = self._run_jobs(
            3,
            ["--device=cuda", "--world_size=1"],
            FSDP_DEVICE_COUNT="8",
            CUDA_VISIBLE_DEVICES="3,6",
        )
        self.assertEqual(
            {r["visible"] for r in records} - {"3", "6"},
            set(),
            f"ws1 jobs under CUDA_VISIBLE_DEVICES=3,6 got {[r['visible'] for r in records]}",
        )
        self._assert_disjoint_while_overlapping(records)
        self.assertEqual(
            self._max_overlap(records), 2, "ws1 jobs on 2 allocated devices did not run 2 at a time"
        )

    def test_pytest_spelling_of_world_size(self):
        (record,) = self._run_jobs(
            1, ["--device=cuda", "--world-size=2"], HOLD_S="0", FSDP_DEVICE_COUNT="8"
        )
        self.assertEqual(
            len(record["visible"].split(",")), 2, f"--world-size=2 (pytest) got {record['visible']}"
        )

    def test_cpu_and_too_few_devices_pass_through(self):
        (cpu,) = self._run_jobs(
            1,
            ["--device=cpu", "--world_size=2"],
            HOLD_S="0",
            FSDP_DEVICE_COUNT="8",
            CUDA_VISIBLE_DEVICES="5",
        )
        self.assertEqual((cpu["visible"], cpu["lease"]), ("5", None))
        (short,) = self._run_jobs(
            1, ["--device=cuda", "--world_size=4"], HOLD_S="0", CUDA_VISIBLE_DEVICES="3,6"
        )
        self.assertEqual((short["visible"], short["lease"]), ("3,6", None))


if __name__ == "__main__":
    unittest.main()
