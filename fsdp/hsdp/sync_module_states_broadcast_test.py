"""Broadcasting rank 0's state makes hybridly sharded replicas that start differently equal.

Every rank builds ``batchnorm_mlp`` from its own seed and shifts its BatchNorm
running statistics by its rank (``models.rank_distinct_model``), so parameters
and buffers differ within and across replicas. The model is sharded hybridly on
``testing.fsdp.meshes.hybrid_shape`` (2 x 2 at world size 4, 4 x 2 at 8; at
prime N, N x 1 for FSDP2 and 1 x N for FSDP1, whose N x 1 case is a known failure of
parity_test), and rank 0's state is spread:

* after sharding, rank 0's full state dict (the other ranks pass an empty dict)
  is loaded with ``set_model_state_dict(..., StateDictOptions(full_state_dict=True,
  broadcast_from_rank0=True))`` (FSDP1 ``HYBRID_SHARD`` and FSDP2);
* before ``fully_shard`` on the 2-D mesh, every parameter and buffer is
  ``dist.broadcast`` from rank 0 (FSDP2, which has no ``sync_module_states``).

Pass: every rank holds exactly rank 0's initial full parameters and buffers, and
after 2 SGD steps on rank-distinct data its parameters equal those of a model
trained without FSDP from rank 0's initialization. A replica that keeps its own
initialization, in parameters or in buffers, fails on its ranks. FSDP1's
``sync_module_states=True`` is in sync_module_states_test.py (accelerators only).
"""

from absl.testing import parameterized

from testing import multirank
from testing.fsdp import api_cases, meshes, models, module_state_sync, wrapping

SPEC = models.get("batchnorm_mlp")  # buffers: BatchNorm running statistics
STEPS = 2


class HsdpSyncModuleStatesBroadcastTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _options(self, api):
        shape = meshes.hybrid_shape(self.world_size, min_shard=2 if api == "fsdp1" else 1)
        return shape, meshes.hsdp_wrap_options(api, shape, self.device.type)

    def _assert_synced_and_trains(self, model, context):
        module_state_sync.assert_synced_and_trains(
            model,
            SPEC,
            steps=STEPS,
            synced_context=f"after the broadcast, vs rank 0's init; {context}",
            trained_context=f"after {STEPS} steps vs reference; {context}",
        )

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_hsdp_broadcast_from_rank0_full_state_dict_syncs_replicas(self, api):
        shape, options = self._options(api)
        model = module_state_sync.wrap_rank_distinct(
            SPEC,
            api,
            self.rank,
            **options,
        )
        module_state_sync.set_full_state_from_rank0(model, SPEC, self.rank)
        self._assert_synced_and_trains(
            model,
            f"set_model_state_dict broadcast_from_rank0 api={api} mesh={meshes.shape_name(shape)}",
        )

    def test_hsdp_broadcast_before_fully_shard_syncs_replicas_fsdp2(self):
        shape, options = self._options("fsdp2")
        model = models.rank_distinct_model(SPEC, self.rank).to(self.device)
        module_state_sync.broadcast_from_rank0(model)
        model = wrapping.wrap(model, "fsdp2", SPEC.units, **options)
        self._assert_synced_and_trains(
            model, f"dist.broadcast before fully_shard mesh={meshes.shape_name(shape)}"
        )


if __name__ == "__main__":
    multirank.main()
