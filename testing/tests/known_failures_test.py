"""Unit tests of testing/known_failures.py: release ranges and conditions of known bugs."""

from absl.testing import absltest, parameterized

from testing import known_failures as kf

_N_BY_1 = kf.TorchBug("pytorch#1", "replicas train apart", affected=">=2.10", world_sizes=">=2")
_FIXED = kf.TorchBug(
    "pytorch#2",
    "unfreeze",
    affected=">=2.10,<2.14.1",
    fixed_by="pytorch#187376",
    devices=("cpu", "cuda"),
    condition=kf.Condition("an fsdp2 case", lambda case: case.params.get("api") == "fsdp2"),
)


def _case(world_size=2, device="cpu", backend="gloo", **params):
    return kf.Case(world_size=world_size, device=device, backend=backend, params=params)


class ReleaseTest(parameterized.TestCase):
    @parameterized.parameters(
        ("2.13.0+cpu", "2.13.0"),
        ("2.14.1+cu130", "2.14.1"),
        ("2.12.1", "2.12.1"),
        ("2.15.0a0+git1a2b3c4", "2.15.0"),
        ("2.16.0.dev20270101+cpu", "2.16.0"),
        ("2.10", "2.10.0"),
    )
    def test_release_part(self, version, release):
        self.assertEqual(kf.release_of(version), release)

    def test_unreadable_version_is_one_error(self):
        with self.assertRaisesRegex(ValueError, "cannot read a release from torch version 'x'"):
            kf.release_of("x")

    @parameterized.parameters(
        ("2.10.0", True), ("2.13.0", True), ("2.14.0", True), ("2.14.1", False), ("2.9.1", False)
    )
    def test_range_with_fix(self, release, affected):
        self.assertEqual(_FIXED.affects(release), affected)

    def test_open_range_covers_a_source_build_of_the_next_release(self):
        self.assertTrue(_N_BY_1.affects(kf.release_of("2.15.0a0+git1a2b3c4")))


class ConditionsTest(absltest.TestCase):
    def test_all_conditions_match(self):
        self.assertEqual(_FIXED.mismatches(_case(api="fsdp2"), "2.13.0"), [])

    def test_each_mismatch_is_named(self):
        why = _FIXED.mismatches(_case(device="xpu", backend="xccl", api="fsdp1"), "2.14.1")
        self.assertEqual(
            why,
            [
                "torch 2.14.1 is outside >=2.10,<2.14.1",
                "device xpu is not cpu/cuda",
                "not an fsdp2 case",
            ],
        )

    def test_world_size_one_has_no_second_replica(self):
        self.assertEqual(
            _N_BY_1.mismatches(_case(world_size=1), "2.13.0"), ["world size 1 is not >=2"]
        )
        self.assertEqual(_N_BY_1.mismatches(_case(world_size=4), "2.13.0"), [])

    def test_world_size_rules(self):
        self.assertTrue(kf.world_size_matches("2, >=8", 8))
        self.assertFalse(kf.world_size_matches("2, >=8", 4))
        self.assertTrue(kf.world_size_matches("even", 4))
        self.assertFalse(kf.world_size_matches("<=2", 3))

    def test_describe_names_releases_fix_and_conditions(self):
        self.assertEqual(
            _FIXED.describe(),
            "known torch bug pytorch#2: unfreeze (affects torch >=2.10,<2.14.1, fixed by "
            "pytorch#187376; shows with device cpu/cuda, an fsdp2 case)",
        )

    def test_strict_mode_never_expects(self):
        self.assertFalse(kf.expected_here(_N_BY_1, "strict", _case()))


class DeclarationTest(absltest.TestCase):
    def test_bad_range_fails_at_declaration(self):
        with self.assertRaisesRegex(ValueError, "affected='2.13'"):
            kf.TorchBug("x#1", "s", affected="2.13")

    def test_bad_world_size_rule_fails_at_declaration(self):
        with self.assertRaisesRegex(ValueError, "'>2'"):
            kf.TorchBug("x#1", "s", affected=">=2.10", world_sizes=">2")

    def test_devices_must_be_a_tuple(self):
        with self.assertRaisesRegex(TypeError, "devices must be a tuple"):
            kf.TorchBug("x#1", "s", affected=">=2.10", devices="cpu")


if __name__ == "__main__":
    absltest.main()
