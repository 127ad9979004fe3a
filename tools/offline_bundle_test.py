"""End-to-end test of tools/offline_bundle: build the bundle, unpack it, run the suite on it.

Pass criterion: tools/offline_bundle writes one tar.xz under 40 MiB (the GPU machines'
working-tree limit is 64 MiB) that unpacks into one directory; every library its Bazel
binaries and JDK core load resolves inside the bundle, except the host's glibc,
libstdc++ and libgcc_s; its install script accepts this host; and with every `bazel`
hidden from PATH, `tools/bazel` run with FSDP_BAZEL_BUNDLE (in a copy of the workspace)
runs a server whose install base and JDK are the bundle's, passes //tools:devices_test,
and, for `test //fsdp/... --config=cuda` with one simulated device, first says how many
targets cannot run.

Needs Debian's bazel-bootstrap and a JDK here; tools/offline_bundle installs what is
missing when run as root with apt-get (as CI runs), else it fails naming the packages.
Tagged `large` (several minutes, mostly xz) and `local` (it uses the host's packages).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
RUNFILES_ROOT = os.path.dirname(HERE)
MAX_BYTES = 40 * 1024 * 1024
HOST_LIBS = ("linux-vdso", "ld-linux", "libc.so", "libm.so", "libstdc++.so", "libgcc_s.so")
# What the nested workspace needs to build //tools and //fsdp (copied from the source tree).
WORKSPACE_FILES = ("WORKSPACE", "BUILD.bazel", ".bazelrc", ".bazelversion")
WORKSPACE_DIRS = ("tools", "testing", "third_party", "fsdp")
# The binaries Bazel starts, and the JDK's core (its desktop libraries keep host-only
# dependencies on purpose: the headless server never loads them).
CORE = (
    "libexec/bazel",
    "install_base/process-wrapper",
    "install_base/linux-sandbox",
    "install_base/daemonize",
    "install_base/build-runfiles",
    "install_base/libcpu_profiler.so",
    "jdk/bin/java",
    "jdk/lib/libjli.so",
    "jdk/lib/server/libjvm.so",
)


def _source_root():
    """The source tree behind this `local` test's runfiles (they are symlinks into it)."""
    return os.path.dirname(os.path.dirname(os.path.realpath(os.path.join(HERE, "offline_bundle"))))


def _copy_workspace(work):
    """Copies what //tools and //fsdp need from the source tree to `work`; returns it."""
    source = _source_root()
    os.makedirs(work)
    for name in WORKSPACE_FILES:
        shutil.copy(os.path.join(source, name), work)
    for name in WORKSPACE_DIRS:
        shutil.copytree(
            os.path.join(source, name),
            os.path.join(work, name),
            ignore=shutil.ignore_patterns("bazel-*", "__pycache__", "*.pyc"),
        )
    return work


def _shadow_path(tmp):
    """A PATH with every command of /usr/bin and /bin except bazel*."""
    shadow = os.path.join(tmp, "shadow_bin")
    os.makedirs(shadow)
    for directory in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
            link = os.path.join(shadow, name)
            if not name.startswith("bazel") and not os.path.lexists(link):
                os.symlink(os.path.join(directory, name), link)
    return shadow


class OfflineBundleTest(unittest.TestCase):
    """One bundle, built and used once for all checks (building takes minutes)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        cls.archive = os.path.join(cls.tmp, "fsdp-bazel-bundle.tar.xz")
        start = time.monotonic()
        proc = subprocess.run(
            [os.path.join(HERE, "offline_bundle"), cls.archive],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        print(
            f"tools/offline_bundle: {time.monotonic() - start:.0f} s\n{proc.stderr}",
            file=sys.stderr,
        )
        if proc.returncode != 0:
            raise AssertionError(f"tools/offline_bundle failed:\n{proc.stderr}")
        cls.prefix = os.path.join(cls.tmp, "prefix")
        os.makedirs(cls.prefix)
        subprocess.run(["tar", "xJf", cls.archive], cwd=cls.prefix, check=True)
        cls.entries = os.listdir(cls.prefix)
        cls.bundle = os.path.join(cls.prefix, sorted(cls.entries)[0])

    def test_one_archive_under_the_limit_with_one_directory(self):
        size = os.path.getsize(self.archive)
        print(f"bundle: {size} bytes", file=sys.stderr)
        self.assertLess(size, MAX_BYTES, "the bundle outgrew 40 MiB")
        self.assertEqual(len(self.entries), 1, self.entries)
        with open(os.path.join(self.bundle, "VERSION")) as f:
            self.assertEqual(f.read().strip(), "4.2.3")

    def test_libraries_resolve_inside_the_bundle(self):
        for rel in CORE:
            out = subprocess.run(
                ["ldd", os.path.join(self.bundle, rel)], capture_output=True, text=True, check=False
            ).stdout
            for line in out.splitlines():
                self.assertNotIn("not found", line, f"{rel}: {line}")
                if "=>" not in line or line.strip().startswith(HOST_LIBS):
                    continue
                path = line.split("=>")[1].split("(")[0].strip()
                self.assertTrue(
                    path.startswith(self.bundle + "/"), f"{rel} loads a host copy: {line}"
                )

    def test_install_script_accepts_this_host(self):
        proc = subprocess.run(
            [os.path.join(self.bundle, "install")], capture_output=True, text=True, check=False
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("bundle OK on this host", proc.stdout)

    def test_tools_bazel_runs_on_the_bundle_alone(self):
        work = _copy_workspace(os.path.join(self.tmp, "ws"))
        env = {
            "PATH": _shadow_path(self.tmp),
            "HOME": self.tmp,
            "FSDP_BAZEL_BUNDLE": self.bundle,
            "FSDP_DEVICE_LOCK_DIR": os.path.join(self.tmp, "locks"),
            # This test's own interpreter (torch, absl, pytest) for every command, so
            # no pinned environment is built; the cuda run names it as the README does.
            "FSDP_PYTHON": sys.executable,
        }
        bazel = [
            os.path.join(work, "tools", "bazel"),
            "--output_user_root=" + os.path.join(self.tmp, "ur"),
        ]
        python = "--repo_env=FSDP_PYTHON=" + sys.executable

        def run(*args, **extra_env):
            return subprocess.run(
                bazel + list(args),
                cwd=work,
                env={**env, **extra_env},
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )

        try:
            info = run("info", "install_base", "java-home")
            self.assertEqual(info.returncode, 0, info.stderr)
            self.assertIn(f"install_base: {self.bundle}/install_base\n", info.stdout)
            self.assertIn(f"java-home: {self.bundle}/jdk\n", info.stdout)
            test = run("test", "//tools:devices_test")
            self.assertEqual(test.returncode, 0, test.stderr)
            self.assertRegex(test.stderr + test.stdout, r"//tools:devices_test +PASSED")
            cuda = run(
                "test", "//fsdp/...", "--config=cuda", "--nobuild", python, FSDP_DEVICE_COUNT="1"
            )
            # `test --nobuild` exits 1 ("Unable to run tests") once it has analysed them.
            self.assertRegex(cuda.stderr, r"Found \d+ targets and \d+ test targets")
            first = [line for line in cuda.stderr.splitlines() if "asking Bazel" not in line][0]
            self.assertRegex(
                first, r"^tools/bazel: \d+ of \d+ selected cuda targets need more devices"
            )
        finally:
            run("shutdown")


if __name__ == "__main__":
    unittest.main()
