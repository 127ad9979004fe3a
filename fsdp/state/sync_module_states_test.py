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
from testing.fsdp import models, params, parity, training, wrapping

SPEC = models.get("batchnorm_mlp")  # buffers: BatchNorm running statistics


class SyncModuleStatesTest(multirank.MultiRankTestCase):
    def test_sync_module_states_makes_ranks_identical_fsdp1(self):
        model = wrapping.wrap(
            models.rank_distinct_model(SPEC, self.rank),
            "fsdp1",
            SPEC.units,
            device=self.device,
            extra={"sync_module_states": True},
        )
        synced = params.full_params(model, buffers=True)
        rank0_init = params.full_params(models.rank_distinct_model(SPEC, 0), buffers=True)
        parity.assert_params_close(
            synced, rank0_init, rtol=0, atol=0, context="after wrap: rank 0's init"
        )
        training.train(model, SPEC, steps=2, seed=0, device=self.device)
        reference, _ = training.reference_train(SPEC, steps=2, seed=0, device=self.device)
        parity.assert_params_close(
            params.full_params(model),
            params.full_params(reference),
            context="after 2 steps vs reference from rank 0's init",
        )


if __name__ == "__main__":
    multirank.main()
