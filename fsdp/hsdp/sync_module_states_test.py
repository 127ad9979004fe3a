"""FSDP1 ``sync_module_states=True`` makes hybridly sharded replicas that start differently equal.

Every rank builds ``batchnorm_mlp`` from its own seed and shifts its BatchNorm
running statistics by its rank (``models.rank_distinct_model``), so parameters
and buffers differ within and across replicas. The model is wrapped with
``HYBRID_SHARD`` and ``sync_module_states=True`` on
``testing.fsdp.meshes.hybrid_shape`` (2 x 2 at world size 4, 4 x 2 at 8, 1 x N at
prime N: FSDP1's N x 1 case is a known failure of parity_test), given as a 2-D
``device_mesh`` or as ``process_group=(intra, inter)``. For hybrid strategies FSDP1
must broadcast across replicas (inter-node group) and then within each replica
(intra-node group); broadcasting only within replicas leaves each replica with
its own local rank 0's state.

Pass: every rank holds exactly rank 0's initial full parameters and buffers, and
after 2 SGD steps on rank-distinct data its parameters equal those of a model
trained without FSDP from rank 0's initialization.

torch refuses ``sync_module_states`` for a module on a CPU device (ValueError:
"requires them to be on GPU"), so the CPU target is disabled; the broadcast
paths in sync_module_states_broadcast_test.py run on CPU.
"""

from absl.testing import parameterized

from testing import multirank
from testing.fsdp import meshes, models, module_state_sync

SPEC = models.get("batchnorm_mlp")  # buffers: BatchNorm running statistics
STEPS = 2


class HsdpSyncModuleStatesTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("device_mesh_fsdp1", "device_mesh"), ("process_group_pair_fsdp1", "process_group")
    )
    def test_hsdp_sync_module_states_syncs_replicas(self, via):
        shape = meshes.hybrid_shape(self.world_size, min_shard=2)
        options = meshes.fsdp1_hybrid_options(shape, self.device.type, via=via)
        options["extra"]["sync_module_states"] = True
        model = module_state_sync.wrap_rank_distinct(
            SPEC,
            "fsdp1",
            self.rank,
            **options,
        )
        context = f"HYBRID_SHARD via={via} mesh={meshes.shape_name(shape)}"
        module_state_sync.assert_synced_and_trains(
            model,
            SPEC,
            steps=STEPS,
            synced_context=f"after wrap, vs rank 0's init; {context}",
            trained_context=f"after {STEPS} steps vs reference; {context}",
        )


if __name__ == "__main__":
    multirank.main()
