"""Broadcasting rank 0's state makes hybridly sharded replicas that start differently equal.

Every rank builds ``batchnorm_mlp`` from its own seed and shifts its BatchNorm
running statistics by its rank (``models.rank_distinct_model``), so parameters
and buffers differ within and across replicas. The model is sharded hybridly on
``testing.fsdp.meshes.hybrid_shape`` (2 x 2 at world size 4; at world size 2,
2 x 1 for FSDP2 and 1 x 2 for FSDP1, whose 2 x 1 case is a known failure of
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

import torch
import torch.distributed as dist
from absl.testing import parameterized
from torch.distributed.checkpoint import state_dict as dcp_state_dict

from testing import multirank
from testing.fsdp import cases, meshes, models, params, parity, training, wrapping

SPEC = models.get("batchnorm_mlp")  # buffers: BatchNorm running statistics
STEPS = 2


class HsdpSyncModuleStatesBroadcastTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _options(self, api):
        shape = meshes.hybrid_shape(self.world_size, min_shard=2 if api == "fsdp1" else 1)
        return shape, meshes.hsdp_wrap_options(api, shape, self.device.type)

    def _assert_synced_and_trains(self, model, context):
        parity.assert_params_close(
            params.full_params(model, buffers=True),
            params.full_params(models.rank_distinct_model(SPEC, 0), buffers=True),
            rtol=0,
            atol=0,
            context=f"after the broadcast, vs rank 0's init; {context}",
        )
        training.train(model, SPEC, steps=STEPS, seed=0, device=self.device)
        reference, _ = training.reference_train(SPEC, steps=STEPS, seed=0, device=self.device)
        parity.assert_params_close(
            params.full_params(model),
            params.full_params(reference),
            context=f"after {STEPS} steps vs reference; {context}",
        )

    @parameterized.named_parameters(*cases.API_CASES)
    def test_hsdp_broadcast_from_rank0_full_state_dict_syncs_replicas(self, api):
        shape, options = self._options(api)
        model = wrapping.wrap(
            models.rank_distinct_model(SPEC, self.rank),
            api,
            SPEC.units,
            device=self.device,
            **options,
        )
        state = models.rank_distinct_model(SPEC, 0).state_dict() if self.rank == 0 else {}
        dcp_state_dict.set_model_state_dict(
            model,
            state,
            options=dcp_state_dict.StateDictOptions(
                full_state_dict=True, broadcast_from_rank0=True
            ),
        )
        self._assert_synced_and_trains(
            model,
            f"set_model_state_dict broadcast_from_rank0 api={api} mesh={meshes.shape_name(shape)}",
        )

    def test_hsdp_broadcast_before_fully_shard_syncs_replicas_fsdp2(self):
        shape, options = self._options("fsdp2")
        model = models.rank_distinct_model(SPEC, self.rank).to(self.device)
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(tensor, src=0)
        model = wrapping.wrap(model, "fsdp2", SPEC.units, device=self.device, **options)
        self._assert_synced_and_trains(
            model, f"dist.broadcast before fully_shard mesh={meshes.shape_name(shape)}"
        )


if __name__ == "__main__":
    multirank.main()
