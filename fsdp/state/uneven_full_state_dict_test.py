"""A full state dict loads the right rows on every rank when dim 0 does not divide.

The ``uneven_mlp`` model has first dimensions 7, 11 and 3 and a 1-element
parameter, so at world size 2 no parameter splits evenly and some ranks hold
an empty shard. A full (unsharded) state dict of differently initialized
weights (a checkpoint) is loaded into a sharded model:

* ``torch.distributed.checkpoint.state_dict.set_model_state_dict`` with
  ``full_state_dict=True``, the dict on every rank;
* the same with ``broadcast_from_rank0=True``, the dict on rank 0 only
  (the path of pytorch#136228, where a 1-row parameter got 2 rows);
* the module's own ``load_state_dict``: FSDP1 under
  ``StateDictType.FULL_STATE_DICT``; FSDP2 after ``distribute_tensor`` of
  each full tensor with its parameter's mesh and placements (FSDP2 refuses a
  dict of plain full tensors).

FSDP2: each rank's local shard (``DTensor.to_local()``) must equal its chunk
of the full tensor under ``torch.chunk(full, world_size, dim=0)`` semantics
(chunks of ceil(rows / world size) rows; ranks past the last chunk hold 0
rows), computed here from the full tensor, not from FSDP. FSDP1's flat
parameters do not shard by rows, so for both APIs the gathered full parameters
must equal the checkpoint exactly, and the model's outputs on rank-distinct
inputs must equal the unsharded checkpoint model's.
"""

import torch
import torch.distributed as dist
from absl.testing import parameterized
from torch.distributed.checkpoint import state_dict as dcp_state_dict
from torch.distributed.fsdp import StateDictType
from torch.distributed.tensor import distribute_tensor

from testing import multirank
from testing.fsdp import api_cases, compat, data, models, params, parity, wrapping

SPEC = models.get("uneven_mlp")
CHECKPOINT_SEED = 3  # the model to load into is built from seed 0


def _expected_local(full, rank, world_size):
    """Rank's rows of ``full`` under Shard(0): torch.chunk, empty past the last chunk."""
    chunks = torch.chunk(full, world_size, dim=0)
    return chunks[rank] if rank < len(chunks) else full[:0]


def _load(model, api, how, state):
    if how == "set_model_state_dict":
        options = dcp_state_dict.StateDictOptions(full_state_dict=True)
        dcp_state_dict.set_model_state_dict(model, state, options=options)
    elif how == "broadcast_from_rank0":
        options = dcp_state_dict.StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        dcp_state_dict.set_model_state_dict(
            model, state if dist.get_rank() == 0 else {}, options=options
        )
    elif api == "fsdp1":
        with compat.FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT):
            model.load_state_dict(state)
    else:
        # FSDP2's load_state_dict takes DTensors (torch 2.13 refuses plain full
        # tensors: "got mixed torch.Tensor and DTensor"): shard each full tensor
        # like its parameter.
        sharded = {}
        for name, p in model.named_parameters():
            sharded[name] = distribute_tensor(state[name], p.device_mesh, p.placements)
        model.load_state_dict(sharded)


class UnevenFullStateDictTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        (f"{how}_{api}", api, how)
        for api in ("fsdp1", "fsdp2")
        for how in ("set_model_state_dict", "broadcast_from_rank0", "load_state_dict")
    )
    def test_full_state_dict_loads_right_rows(self, api, how):
        source = SPEC.build(seed=CHECKPOINT_SEED).to(self.device)
        checkpoint = {k: v.detach().clone() for k, v in source.state_dict().items()}
        model = wrapping.wrap_spec(SPEC, api, seed=0)
        # A copy: set_model_state_dict replaces the dict's values with sharded ones.
        _load(model, api, how, {k: v.clone() for k, v in checkpoint.items()})
        what = f"api={api} {how} world_size={self.world_size}"

        local, expected = {}, {}
        if api == "fsdp2":
            for name, p in model.named_parameters():
                self.assertTrue(compat.is_dtensor(p), f"{what}: {name} is not a DTensor")
                local[name] = p.to_local()
                expected[name] = _expected_local(checkpoint[name], self.rank, self.world_size)
        full = params.full_params(model)  # collective: before any assert
        parity.assert_params_close(
            local, expected, rtol=0, atol=0, what="local shard", context=what
        )
        parity.assert_params_close(
            full,
            {k: v.cpu() for k, v in checkpoint.items()},
            rtol=0,
            atol=0,
            context=f"{what}: full parameters",
        )
        inputs, _ = data.rank_batch(SPEC, seed=0, rank=self.rank, step=api_cases.EVAL_STEP)
        with torch.no_grad():
            parity.assert_tensors_close(
                model(inputs), source(inputs), name="output vs checkpoint model", context=what
            )


if __name__ == "__main__":
    multirank.main()
