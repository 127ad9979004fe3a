"""Broadcasting rank 0's module states makes ranks that start differently identical.

The FSDP2 equivalent of FSDP1's ``sync_module_states`` (FSDP2 has no such
flag), also available to FSDP1: each rank builds the model from its own seed
and shifts its BatchNorm running statistics by its rank, so parameters and
buffers differ across ranks. Then either

* after sharding, rank 0's full state dict (the other ranks pass an empty dict)
  is loaded with ``set_model_state_dict(..., StateDictOptions(
  full_state_dict=True, broadcast_from_rank0=True))`` (FSDP1 and FSDP2), or
* before ``fully_shard``, every parameter and buffer is ``dist.broadcast`` from
  rank 0 (FSDP2).

Afterwards every rank must hold rank 0's full parameters and buffers, and two
SGD steps on rank-distinct data must match a reference trained from rank 0's
initialization.
"""

import torch
import torch.distributed as dist
from absl.testing import parameterized
from torch.distributed.checkpoint import state_dict as dcp_state_dict

from testing import multirank
from testing.fsdp import cases, models, params, parity, training, wrapping

SPEC = models.get("batchnorm_mlp")  # buffers: BatchNorm running statistics


class SyncModuleStatesBroadcastTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _assert_synced_and_trains(self, model, what):
        parity.assert_params_close(
            params.full_params(model, buffers=True),
            params.full_params(models.rank_distinct_model(SPEC, 0), buffers=True),
            rtol=0,
            atol=0,
            context=f"after sync: rank 0's init ({what})",
        )
        training.train(model, SPEC, steps=2, seed=0, device=self.device)
        reference, _ = training.reference_train(SPEC, steps=2, seed=0, device=self.device)
        parity.assert_params_close(
            params.full_params(model),
            params.full_params(reference),
            context=f"after 2 steps vs reference ({what})",
        )

    @parameterized.named_parameters(*cases.API_CASES)
    def test_broadcast_from_rank0_full_state_dict_makes_ranks_identical(self, api):
        model = wrapping.wrap(
            models.rank_distinct_model(SPEC, self.rank), api, SPEC.units, device=self.device
        )
        state = models.rank_distinct_model(SPEC, 0).state_dict() if self.rank == 0 else {}
        dcp_state_dict.set_model_state_dict(
            model,
            state,
            options=dcp_state_dict.StateDictOptions(
                full_state_dict=True, broadcast_from_rank0=True
            ),
        )
        self._assert_synced_and_trains(model, f"set_model_state_dict broadcast api={api}")

    def test_broadcast_before_fully_shard_makes_ranks_identical_fsdp2(self):
        model = models.rank_distinct_model(SPEC, self.rank).to(self.device)
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(tensor, src=0)
        model = wrapping.wrap(model, "fsdp2", SPEC.units, device=self.device)
        self._assert_synced_and_trains(model, "dist.broadcast before fully_shard")


if __name__ == "__main__":
    multirank.main()
