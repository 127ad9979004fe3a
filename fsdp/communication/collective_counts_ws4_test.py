"""Hybrid sharding and resharding to a subgroup issue exactly the expected collectives.

The world-size-4 part of ``collective_counts_test.py`` (same model and
method): the second step of a run, recorded per phase at the dispatcher, must
match a table derived from the model's structure, call for call, byte for byte
and on the right process group (kinds are keyed ``<kind>@<group size>``).
``sized_chain`` has 4 FSDP units (three layers and the root), 3632 bytes in all,
3408 outside the root. Parameters after the step must equal an unsharded
reference.

* FSDP1 ``HYBRID_SHARD`` and FSDP2 on a 2x2 (replicate x shard) mesh: the flat
  algorithm on the shard group of 2 (gather every unit for forward, every
  non-root unit again for backward, reduce-scatter every unit's gradient), then
  every unit all-reduces its gradient shard (3632 / 2 bytes in all) over the
  replicate group of 2.
* FSDP2 ``reshard_after_forward=2`` on a 4-rank mesh: forward gathers over all
  4 ranks; after forward each non-root unit keeps a half instead of a quarter,
  so its backward all-gather runs on a group of 2 (same bytes: the whole unit);
  gradients reduce-scatter over all 4 ranks.
"""

from absl.testing import parameterized

from testing import multirank
from testing.fsdp import collective_count, meshes, sized_chain, wrapping

SPEC = sized_chain.SPEC
ALL = sum(sized_chain.unit_bytes(u) for u in sized_chain.NUMEL)  # 3632
NON_ROOT = ALL - sized_chain.unit_bytes(sized_chain.ROOT)  # 3408
N_UNITS = len(sized_chain.NUMEL)  # 4
N_NON_ROOT = N_UNITS - 1  # the root is never resharded after forward
FWD, BWD = collective_count.FORWARD, collective_count.BACKWARD

HYBRID_2X2 = {
    FWD: {"all_gather@2": (N_UNITS, ALL)},
    BWD: {
        "all_gather@2": (N_NON_ROOT, NON_ROOT),
        "reduce_scatter@2": (N_UNITS, ALL),
        "all_reduce@2": (N_UNITS, ALL // 2),
    },
}
RESHARD_TO_2 = {
    FWD: {"all_gather@4": (N_UNITS, ALL)},
    BWD: {"all_gather@2": (N_NON_ROOT, NON_ROOT), "reduce_scatter@4": (N_UNITS, ALL)},
}


class CollectiveCountsWs4Test(multirank.MultiRankTestCase, parameterized.TestCase):
    def _mesh_2x2(self):
        # Cached for the ranks' lifetime (a mesh made per test would leak its groups).
        return meshes.hsdp_mesh((2, 2), self.device.type)

    def test_step_counts_hybrid_shard_2x2_fsdp1(self):
        model = wrapping.wrap_spec(
            SPEC,
            "fsdp1",
            device=self.device,
            sharding_strategy="HYBRID_SHARD",
            extra={"device_mesh": self._mesh_2x2()},
        )
        log = sized_chain.record_step(model, self.device)
        collective_count.assert_counts(
            log, HYBRID_2X2, by_group=True, context="api=fsdp1 HYBRID_SHARD mesh=2x2"
        )
        sized_chain.check_parameters(model, self.device, "api=fsdp1 HYBRID_SHARD mesh=2x2")

    def test_step_counts_hybrid_mesh_2x2_fsdp2(self):
        model = sized_chain.wrap_fsdp2(self.device, mesh=self._mesh_2x2())
        log = sized_chain.record_step(model, self.device)
        collective_count.assert_counts(log, HYBRID_2X2, by_group=True, context="api=fsdp2 mesh=2x2")
        sized_chain.check_parameters(model, self.device, "api=fsdp2 mesh=2x2")

    def test_step_counts_reshard_after_forward_2_fsdp2(self):
        model = sized_chain.wrap_fsdp2(self.device, reshard=2)
        log = sized_chain.record_step(model, self.device)
        collective_count.assert_counts(
            log, RESHARD_TO_2, by_group=True, context="api=fsdp2 reshard_after_forward=2"
        )
        sized_chain.check_parameters(model, self.device, "api=fsdp2 reshard_after_forward=2")


if __name__ == "__main__":
    multirank.main()
