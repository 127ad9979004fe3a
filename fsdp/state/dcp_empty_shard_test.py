"""A DCP checkpoint of model and optimizer loads when some ranks hold an empty shard.

The ``tiny_params`` model's 1-row and 1-element parameters leave some ranks
without any rows of them at every world size from 2 on (one rank has nothing
to split, so BUILD declares ``>=2``). The model is sharded, trained for two
AdamW steps on rank-distinct data, and its model and optimizer state dicts
(``torch.distributed.checkpoint.state_dict.get_state_dict``, sharded) are
written with ``dcp.save``; first, the parameters each rank holds no rows of
in that model state dict must be those ``torch.chunk`` leaves it none of
(``at_world_size.chunk_rows``), and there must be some, so the checkpoint
really has empty shards. Then a fresh, differently initialized model and
optimizer, sharded the same way, read them back with ``dcp.load`` and
``set_state_dict``. The gathered full parameters and optimizer state (step,
exp_avg, exp_avg_sq) must equal the saved ones exactly, and two more steps
must give the parameters of the uninterrupted run.

Found with torch 2.13 (CPU): FSDP1's load fails with "Missing key in
checkpoint state_dict: optim.param_groups." A rank without rows of a parameter
lacks its keys, so DCP's planner takes the checkpoint for the pre-2.4 layout
and looks up the optimizer's param groups under their old key. FSDP2 loads.
"""

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from absl.testing import parameterized
from torch.distributed.checkpoint import state_dict as dsd

from testing import dist_helpers, known_failures, multirank
from testing.fsdp import api_cases, at_world_size, models, params, parity, state_dicts, training
from testing.fsdp import wrapping

SPEC = models.get("tiny_params")


def _adamw(parameters):
    return torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.1)


class DcpEmptyShardTest(multirank.MultiRankTestCase, parameterized.TestCase):
    known_failures = {
        "test_dcp_round_trip_with_empty_shards_fsdp1": known_failures.TorchBug(
            "FSDP1 DCP optimizer state with empty shards",
            "a rank holding no rows of a parameter writes no optimizer keys for it, so "
            "DCP loads the checkpoint as the pre-2.4 format: 'Missing key in checkpoint "
            "state_dict: optim.param_groups'",
            affected=">=2.10",
            # One rank holds every row: no empty shard.
            world_sizes=">=2",
        ),
    }

    def _assert_empty_shards(self, state, full, what):
        """Each rank holds no rows of exactly the parameters torch.chunk leaves it none of."""
        empty = sorted(name for name, value in state.items() if state_dicts.local_numel(value) == 0)
        per_rank = [None] * self.world_size
        dist.all_gather_object(per_rank, empty)  # every rank then asserts on the same lists
        expected = [
            sorted(
                name
                for name, tensor in full.items()
                if at_world_size.chunk_rows(tensor.shape[0], rank, self.world_size) == 0
            )
            for rank in range(self.world_size)
        ]
        self.assertTrue(any(expected), f"{what}: no parameter leaves a rank without rows")
        self.assertEqual(per_rank, expected, f"{what}: parameters each rank holds no rows of")

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_dcp_round_trip_with_empty_shards(self, api):
        what = f"api={api} world_size={self.world_size}"
        model = wrapping.wrap_spec(SPEC, api)
        opt = _adamw(model.parameters())
        training.train(model, SPEC, steps=range(2), optimizer=opt)
        expected_params = params.full_params(model)
        expected_optim = state_dicts.full_optim_state(model, opt)

        fresh = wrapping.wrap_spec(SPEC, api, seed=1)
        fresh_opt = _adamw(fresh.parameters())
        with dist_helpers.shared_tempdir(prefix="ckpt-") as path:
            model_state, optim_state = dsd.get_state_dict(model, opt)
            self._assert_empty_shards(model_state, expected_params, what)
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=path)
            # get_state_dict creates the optimizer state that dcp.load fills in place.
            model_state, optim_state = dsd.get_state_dict(fresh, fresh_opt)
            state = {"model": model_state, "optim": optim_state}
            dcp.load(state, checkpoint_id=path)
            dsd.set_state_dict(
                fresh, fresh_opt, model_state_dict=state["model"], optim_state_dict=state["optim"]
            )
        actual_params = params.full_params(fresh)  # collectives: before any assert
        actual_optim = state_dicts.full_optim_state(fresh, fresh_opt)
        state_dicts.assert_loaded_exactly(
            actual_params, actual_optim, expected_params, expected_optim, what
        )

        training.train(model, SPEC, steps=range(2, 4), optimizer=opt)
        training.train(fresh, SPEC, steps=range(2, 4), optimizer=fresh_opt)
        uninterrupted = params.full_params(model)
        parity.assert_params_close(
            params.full_params(fresh),
            uninterrupted,
            context=f"{what}: resumed vs uninterrupted run",
        )


if __name__ == "__main__":
    multirank.main()
