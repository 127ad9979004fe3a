"""Tests of tools/bazel with a fake Bazel: offline bundles and the device shortfall note.

Pass criterion: an unpacked bundle named by FSDP_BAZEL_BUNDLE is the Bazel that runs
(even with another bazel on PATH) and its VERSION file, not the client's `--version`,
passes or fails the .bazelversion check; a FSDP_BAZEL_BUNDLE that is no bundle fails in
one line; with --config=cuda and a simulated device count (FSDP_DEVICE_COUNT, or a fake
nvidia-smi on PATH), the first line says how many selected targets need more devices
and which flag selects the rest, after a query that repeats the run's startup options
and --repo_env (so the run reuses the server and the repositories); enough devices, or
a CPU run, print no note (and a CPU run asks no query).
The fake Bazel records each call and answers `query` with device_shortfall_test.XML.
"""

import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from device_shortfall_test import XML  # noqa: E402

WRAPPER = os.path.join(HERE, "bazel")

FAKE_BAZEL = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    args = sys.argv[1:]
    with open(os.environ["FAKE_BAZEL_LOG"], "a") as f:
        f.write(json.dumps(args) + "\\n")
    if args == ["--version"]:
        print("bazel 9.9.9")  # the bundle's VERSION must be what counts
    elif "query" in args:
        with open(os.environ["FAKE_BAZEL_XML"]) as f:
            sys.stdout.write(f.read())
    else:
        print("fake bazel ran")
    """)

FAKE_NVIDIA_SMI = textwrap.dedent("""\
    #!/bin/sh
    echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"
    echo "GPU 1: NVIDIA H200 (UUID: GPU-1)"
    """)


def _write_exe(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


class BazelWrapperTest(unittest.TestCase):
    """tools/bazel's Bazel choice, version check and device note, on a fake Bazel."""

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        self.bundle = os.path.join(self.tmp, "fsdp-bazel-4.2.3")
        _write_exe(
            os.path.join(self.bundle, "bin", "bazel"), FAKE_BAZEL.format(python=sys.executable)
        )
        _write_exe(os.path.join(self.bundle, "libexec", "bazel"), "#!/bin/sh\nexit 1\n")
        self._set_version("4.2.3")
        self.log = os.path.join(self.tmp, "calls.jsonl")
        xml = os.path.join(self.tmp, "query.xml")
        with open(xml, "w") as f:
            f.write(XML)
        self.fake_bin = os.path.join(self.tmp, "fake_bin")
        os.makedirs(self.fake_bin)
        self.env = {
            "PATH": self.fake_bin + ":/usr/bin:/bin",
            "HOME": self.tmp,
            "FSDP_BAZEL_BUNDLE": self.bundle,
            "FAKE_BAZEL_LOG": self.log,
            "FAKE_BAZEL_XML": xml,
            "FSDP_DEVICE_LOCK_DIR": os.path.join(self.tmp, "locks"),
        }

    def _set_version(self, version):
        with open(os.path.join(self.bundle, "VERSION"), "w") as f:
            f.write(version + "\n")

    def _run(self, *args, **env):
        python = "--repo_env=FSDP_PYTHON=" + sys.executable
        proc = subprocess.run(
            [WRAPPER, *args, python],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        calls = []
        if os.path.exists(self.log):
            with open(self.log) as f:
                calls = [json.loads(line) for line in f]
        return proc, calls

    def _notes(self, proc):
        """stderr lines other than the progress line (at least one)."""
        notes = [line for line in proc.stderr.splitlines() if "asking Bazel" not in line]
        self.assertTrue(notes, f"nothing printed before Bazel ran: {proc.stderr!r}")
        return notes

    def test_bundle_runs_and_its_version_file_counts(self):
        proc, calls = self._run("--output_user_root=/tmp/x", "build", "//tools:all")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, "fake bazel ran\n")
        self.assertEqual(calls[-1][:3], ["--output_user_root=/tmp/x", "build", "//tools:all"])

    def test_bundle_of_another_major_version_is_refused(self):
        self._set_version("5.0.0")
        proc, calls = self._run("build", "//tools:all")
        self.assertEqual(proc.returncode, 2)
        self.assertIn("Bazel 5.0.0 (", proc.stderr)
        self.assertIn("cannot build this workspace", proc.stderr)
        self.assertNotIn(["build", "//tools:all"], [c[:2] for c in calls])

    def test_not_a_bundle_fails_in_one_line(self):
        proc, _ = self._run("build", FSDP_BAZEL_BUNDLE=os.path.join(self.tmp, "nothing"))
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(len(proc.stderr.splitlines()), 1, proc.stderr)
        self.assertIn("is not an unpacked bundle", proc.stderr)

    def test_one_device_note_comes_first(self):
        proc, calls = self._run(
            "--output_user_root=/tmp/x",
            "test",
            "//fsdp/...",
            "--config=cuda",
            FSDP_DEVICE_COUNT="1",
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(
            self._notes(proc)[0],
            "tools/bazel: 2 of 3 selected cuda targets need more devices than the 1 this "
            "host has and will fail; to run only the rest: "
            "--test_tag_filters=gpu,-requires-multi-device",
        )
        query = [c for c in calls if "query" in c][0]
        self.assertEqual(query[:2], ["--output_user_root=/tmp/x", "query"])
        self.assertIn("--repo_env=FSDP_PYTHON=" + sys.executable, query)
        run = calls[-1]
        self.assertEqual(run[:3], ["--output_user_root=/tmp/x", "test", "//fsdp/..."])
        self.assertIn("--local_test_jobs=1", run)

    def test_fake_nvidia_smi_count(self):
        _write_exe(os.path.join(self.fake_bin, "nvidia-smi"), FAKE_NVIDIA_SMI)
        proc, _ = self._run("test", "//fsdp/...", "--config=cuda")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        note = self._notes(proc)[0]
        self.assertIn("1 of 3 selected cuda targets need more devices than the 2 this", note)
        self.assertTrue(note.endswith("--test_tag_filters=gpu,-ws4"), note)

    def test_enough_devices_or_cpu_print_no_note(self):
        proc, calls = self._run("test", "//fsdp/...", "--config=cuda", FSDP_DEVICE_COUNT="4")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertNotIn("need more devices", proc.stderr)
        os.remove(self.log)
        proc, calls = self._run("test", "//fsdp/...", FSDP_DEVICE_COUNT="1")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertFalse([c for c in calls if "query" in c], calls)
        self.assertNotIn("need more devices", proc.stderr)


if __name__ == "__main__":
    unittest.main()
