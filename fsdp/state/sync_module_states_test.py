"""FSDP1 ``sync_module_states=True`` makes ranks that start differently identical.

Each rank builds the model from its own seed (rank r: seed r) and shifts its
BatchNorm running statistics by its rank, so parameters and buffers differ
across ranks. Wrapping with ``sync_module_states=True`` must broadcast rank 0's module
states: afterwards every rank has rank 0's full parameters and buffers, and two
SGD steps on rank-distinct data match a reference trained from rank 0's
initialization.

torch refuses ``sync_module_states`` for a module on a CPU device (ValueError:
"requires them to be on GPU"), so the CPU target is disabled; the FSDP2
equivalent and the broadcast-based paths are in
sync_module_states_broadcast_test.py and run on CPU.
"""

from testing import multirank
from testing.fsdp import models, rank_sync

SPEC = models.get("batchnorm_mlp")  # buffers: BatchNorm running statistics


class SyncModuleStatesTest(multirank.MultiRankTestCase):
    def test_sync_module_states_makes_ranks_identical_fsdp1(self):
        model = rank_sync.wrap_rank_distinct(
            SPEC,
            "fsdp1",
            self.rank,
            device=self.device,
            extra={"sync_module_states": True},
        )
        rank_sync.assert_synced_and_trains(
            model,
            SPEC,
            steps=2,
            device=self.device,
            synced_context="after wrap: rank 0's init",
            trained_context="after 2 steps vs reference from rank 0's init",
        )


if __name__ == "__main__":
    multirank.main()
