"""Tests of tools/zip_shim/zip, the stand-in for `zip` on hosts that lack it.

Pass criterion: called as Bazel 4.2.3's test-setup.sh calls zip (`zip -qr ARCHIVE --
<every top-level entry, dot files included>` from the undeclared outputs directory), it
writes a zip archive that Python's zipfile reads back with every file at its relative
path and with its bytes; an option it does not implement fails with exit 2 and one
line on stderr, and writes no archive.
"""

import os
import subprocess
import tempfile
import unittest
import zipfile

SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zip_shim", "zip")

# What a multi-rank test leaves behind (rank-distinct contents).
OUTPUTS = {
    "environment.json": b'{"devices": []}\n',
    "rank_logs/Case/rank0.log": b"rank 0 says hello\n",
    "rank_logs/Case/rank1.log": b"rank 1 says goodbye\n",
    ".hidden/state": bytes(range(256)),
}


class ZipShimTest(unittest.TestCase):
    """The shim packs a test's outputs the way test-setup.sh asks for."""

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        self.outputs = os.path.join(self.tmp, "outputs")
        for rel, data in OUTPUTS.items():
            path = os.path.join(self.outputs, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        self.archive = os.path.join(self.tmp, "outputs.zip")

    def _zip(self, *args):
        return subprocess.run(
            [SHIM, *args], cwd=self.outputs, capture_output=True, text=True, check=False
        )

    def test_packs_like_test_setup_asks(self):
        entries = sorted(os.listdir(self.outputs))  # test-setup's `*` under dotglob
        proc = self._zip("-qr", self.archive, "--", *entries)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout + proc.stderr, "")
        with zipfile.ZipFile(self.archive) as zf:
            self.assertEqual(sorted(zf.namelist()), sorted(OUTPUTS))
            for rel, data in OUTPUTS.items():
                self.assertEqual(zf.read(rel), data, rel)

    def test_unknown_option_fails_in_one_line(self):
        proc = self._zip("-x", self.archive, "--", "environment.json")
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(len(proc.stderr.splitlines()), 1, proc.stderr)
        self.assertIn("unsupported option -x", proc.stderr)
        self.assertFalse(os.path.exists(self.archive))


if __name__ == "__main__":
    unittest.main()
