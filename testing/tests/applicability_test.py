"""Bazel and pytest agree on where every fsdp_test applies.

Each package's ``fsdp_test_suites()`` writes ``applicability.json``: the targets its
``fsdp_test``s made, as Bazel evaluated the BUILD file (device, world size, the
declaration passed to the harness, tags). This test reads the same BUILD files as
pytest does (``testing/applicability.py``, through ``ast``) and fails where the two
disagree:

* the world sizes per device (defaults included), the valid-world-size rule, the
  ``cases`` and the disabled devices (``manual`` + ``disabled:<reason>`` tags);
* the ``large`` tag, from world size 8 on;
* what the pytest plugin plans (``testing/run_plan.plan``) for every test method, on
  cpu and on cuda with 1 and 2 devices simulated: the same sizes as Bazel's targets,
  runnable exactly where the target runs by default, the harness would run the case
  (its ``FSDP_TEST_APPLICABILITY``) and the host holds the size;
* every ``cases`` pattern names at least one test method of its file;
* every package under ``fsdp/`` with an ``fsdp_test`` has its record in this test's
  data (read through the runfiles' links into the source tree).
"""

import fnmatch
import glob
import importlib.util
import json
import os
import sys
import unittest
from typing import Dict, List

from absl.testing import absltest

from testing import applicability
from testing import devices
from testing import multirank
from testing import run_plan

# Simulated hosts: (device, devices visible); -1 is CPU's "no limit".
_HOSTS = (("cpu", -1), ("cuda", 1), ("cuda", 2))


def _records() -> Dict[str, dict]:
    """{package: applicability.json} of the packages in this test's data."""
    found = {}
    for path in glob.glob("fsdp/**/applicability.json", recursive=True):
        with open(path) as f:
            record = json.load(f)
        found[record["package"]] = record
    return found


def _arg(target: dict, flag: str) -> str:
    return next(a.split("=", 1)[1] for a in target["args"] if a.startswith(flag + "="))


def _test_methods(test_file: str) -> List[str]:
    """The test methods pytest collects from ``test_file``: those of its multi-rank classes."""
    name = os.path.splitext(test_file)[0].replace(os.sep, ".")
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, test_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    loader = unittest.TestLoader()
    methods = []
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, multirank.MultiRankTestCase):
            methods.extend(loader.getTestCaseNames(value))
    return sorted(set(methods))


class ApplicabilityTest(absltest.TestCase):
    def assert_agree(self, problems: List[str]) -> None:
        """Fails with the number of disagreements and the first 20 of them."""
        if problems:
            shown = "\n".join(problems[:20])
            self.fail(f"{len(problems)} disagreements between Bazel and pytest:\n{shown}")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.records = _records()

    def test_every_fsdp_package_has_a_record(self):
        self.assertNotEmpty(self.records, "no applicability.json in the runfiles")
        # The runfiles link to the source tree, where every package can be seen.
        source_root = os.path.dirname(os.path.dirname(os.path.realpath("fsdp/BUILD.bazel")))
        declared = set()
        for build in glob.glob(os.path.join(source_root, "fsdp/**/BUILD.bazel"), recursive=True):
            if applicability.read_build(build):
                declared.add(os.path.relpath(os.path.dirname(build), source_root))
        self.assertEqual(
            declared - set(self.records),
            set(),
            "packages with fsdp_test missing from //testing/tests:applicability_test's data",
        )

    def test_targets_match_the_declarations(self):
        problems = []
        for package, record in sorted(self.records.items()):
            declared = applicability.read_build(os.path.join(package, "BUILD.bazel"))
            made = {t["generator"] for t in record["targets"]}
            if made != set(declared):
                problems.append(
                    f"{package}: targets of {sorted(made)}, BUILD has {sorted(declared)}"
                )
            for name, kwargs in sorted(declared.items()):
                targets = [t for t in record["targets"] if t["generator"] == name]
                problems += self._compare(f"//{package}:{name}", kwargs, targets)
        self.assert_agree(problems)

    def _compare(self, label: str, kwargs: dict, targets: List[dict]) -> List[str]:
        """Where one fsdp_test's targets disagree with its ast-read declaration."""
        declaration = applicability.Declaration.from_kwargs(kwargs)
        problems = []
        for device, kind in devices.DEVICES.items():
            mine = [t for t in targets if _arg(t, "--device") == device]
            sizes = sorted(int(_arg(t, "--world_size")) for t in mine)
            # pytest knows no `devices` subset: a test limited to some devices disagrees.
            expected = declaration.world_sizes_for(device, kind.accelerator)
            if sizes != expected:
                problems.append(f"{label} {device}: Bazel sizes {sizes}, pytest reads {expected}")
            by_hand = "large" in kwargs.get("tags", [])
            for target in mine:
                large = by_hand or _arg(target, "--device") in kwargs.get("large", {})
                problems += _compare_target(label, declaration, target, large)
        return problems

    def test_pytest_plans_what_bazel_runs(self):
        problems = []
        for package, record in sorted(self.records.items()):
            for target in record["targets"]:
                test_file = os.path.join(package, target["srcs"][0].split(":")[-1])
                for method in _test_methods(test_file):
                    problems += _compare_plan(test_file, method, target, record["targets"])
        self.assert_agree(problems)

    def test_case_patterns_name_test_methods(self):
        problems = []
        for package in sorted(self.records):
            for name, kwargs in applicability.read_build(
                os.path.join(package, "BUILD.bazel")
            ).items():
                srcs = kwargs.get("srcs") or [name + ".py"]
                methods = _test_methods(os.path.join(package, srcs[0]))
                for pattern in kwargs.get("cases") or {}:
                    if not fnmatch.filter(methods, pattern):
                        problems.append(f"//{package}:{name}: cases[{pattern!r}] names no method")
        self.assert_agree(problems)


def _compare_target(label, declaration, target, large_by_hand: bool) -> List[str]:
    """Where one Bazel target's tags and harness declaration disagree with BUILD's."""
    problems = []
    device = _arg(target, "--device")
    size = int(_arg(target, "--world_size"))
    tags = set(target["tags"])
    reason = declaration.disabled.get(device)
    disabled = {"manual", "disabled", f"disabled:{reason}"} if reason else set()
    if {t for t in tags if t.startswith("disabled") or t == "manual"} != disabled:
        problems.append(f"{target['name']}: tags {sorted(tags)}, {label} disables {reason!r}")
    if ("large" in tags) != (large_by_hand or size >= devices.get(device).large_world_size):
        problems.append(f"{target['name']}: world size {size}, tags {sorted(tags)}")
    harness = applicability.Declaration.from_json(target["applicability"])
    if harness.valid != declaration.valid or dict(harness.cases) != dict(declaration.cases):
        problems.append(f"{target['name']}: the harness gets {target['applicability']}")
    return problems


def _compare_plan(test_file: str, method: str, target: dict, targets: List[dict]) -> List[str]:
    """Where the pytest plan of one method disagrees with the targets Bazel made."""
    problems = []
    for device, visible in _HOSTS:
        if _arg(target, "--device") != device:
            continue
        kind = devices.get(device)
        mine = {
            int(_arg(t, "--world_size")): t
            for t in targets
            if t["generator"] == target["generator"] and _arg(t, "--device") == device
        }
        planned = {p.world_size: p for p in run_plan.plan(test_file, method, kind, visible)}
        where = f"{test_file} {method} on {device} with {visible} visible"
        if sorted(planned) != sorted(mine):
            problems.append(f"{where}: pytest plans {sorted(planned)}, Bazel has {sorted(mine)}")
            continue
        size = int(_arg(target, "--world_size"))
        harness = applicability.Declaration.from_json(target["applicability"])
        runs = (
            "manual" not in target["tags"]
            and harness.not_run_reason(method, device, size) is None
            and (not kind.accelerator or size <= visible)
        )
        if (planned[size].not_run is None) != runs:
            problems.append(
                f"{where}, ws{size}: pytest {planned[size].not_run or 'runs it'}; "
                f"Bazel target {target['name']} {'runs' if runs else 'does not run'} it"
            )
    return problems


if __name__ == "__main__":
    absltest.main()
