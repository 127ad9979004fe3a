"""A sharded state dict, directly and through torch.distributed.checkpoint, restores a model.

A model is sharded, trained for two SGD steps on rank-distinct data, and its
sharded state dict is taken: FSDP1 under ``SHARDED_STATE_DICT``, FSDP2 as its
native DTensor state dict. Every value must be a sharded tensor holding this
rank's rows of the parameter as ``torch.chunk`` splits dim 0 over the world
(``at_world_size.local_numel``: all of it at world size 1, none past the last
chunk), and the ranks' parts must add up to the parameter. At world size 1
FSDP1 runs NO_SHARD, whose sharded state dict holds the plain full tensors.
The dict is loaded (in memory) into a fresh, differently initialized model; it
is also written with ``dcp.save`` and read back with ``dcp.load`` into a fresh
model. The loaded model must have the trained full
parameters and give the trained model's outputs on rank-distinct inputs.
Checkpoints live under TEST_TMPDIR and are removed afterwards. Loading at a
different world size is in sharded_state_dict_world_size_test.py.
"""

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from absl.testing import parameterized

from testing import dist_helpers, multirank
from testing.fsdp import api_cases, at_world_size, compat, data, models, params, parity, state_dicts
from testing.fsdp import training, wrapping

SPEC = models.get("nested_mlp")


class ShardedStateDictTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _trained(self, api, **wrap_options):
        model = wrapping.wrap_spec(SPEC, api, **wrap_options)
        training.train(model, SPEC, steps=2, seed=0)
        return model

    def _inputs(self):
        inputs, _ = data.rank_batch(SPEC, seed=0, rank=self.rank, step=api_cases.EVAL_STEP)
        return inputs

    def _assert_restored(self, loaded, expected_params, expected_out, what):
        parity.assert_params_close(
            params.full_params(loaded), expected_params, rtol=0, atol=0, context=what
        )
        with torch.no_grad():
            out = loaded(self._inputs())
        parity.assert_tensors_close(out, expected_out, rtol=0, atol=0, name=f"output, {what}")

    def _expected(self, trained):
        expected_params = params.full_params(trained)
        with torch.no_grad():
            expected_out = trained(self._inputs())
        return expected_params, expected_out

    def _assert_rank_parts(self, state, full, api):
        """Each value holds this rank's chunk of rows; the ranks' parts tile the tensor."""
        held = {name: state_dicts.local_numel(t) for name, t in state.items()}
        totals = torch.tensor([held[name] for name in sorted(held)], device=self.device)
        dist.all_reduce(totals)  # collective: before any assert
        what = f"api={api} rank {self.rank} of {self.world_size}"
        for name, tensor in state.items():
            if not at_world_size.shards(api, self.world_size):
                self.assertFalse(
                    compat.is_dtensor(tensor) or hasattr(tensor, "local_shards"),
                    f"{what}: {name} is a {type(tensor).__name__} under NO_SHARD",
                )
                self.assertEqual(tuple(tensor.shape), tuple(full[name].shape), f"{what}: {name}")
                continue
            self.assertTrue(
                compat.is_dtensor(tensor) or hasattr(tensor, "local_shards"),
                f"{what}: {name} is a {type(tensor).__name__}, not a sharded tensor",
            )
            expected = at_world_size.local_numel(full[name].shape, self.rank, self.world_size)
            self.assertEqual(held[name], expected, f"{what}: elements held of {name}")
        self.assertEqual(
            dict(zip(sorted(held), totals.tolist())),
            {name: full[name].numel() for name in sorted(held)},
            f"{what}: elements held by all ranks together",
        )

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_sharded_state_dict_round_trip(self, api):
        trained = self._trained(api)
        expected_params, expected_out = self._expected(trained)
        state = state_dicts.sharded_state_dict(trained, api)
        self.assertEqual(sorted(state), sorted(expected_params), "sharded state dict keys")
        self._assert_rank_parts(state, expected_params, api)
        fresh = wrapping.wrap_spec(SPEC, api, seed=1)
        state_dicts.load_sharded_state_dict(fresh, api, state)
        self._assert_restored(
            fresh, expected_params, expected_out, f"in-memory sharded load api={api}"
        )

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_dcp_save_load_round_trip(self, api):
        trained = self._trained(api)
        expected_params, expected_out = self._expected(trained)
        with dist_helpers.shared_tempdir(prefix="ckpt-") as path:
            dcp.save(state_dicts.sharded_state_dict(trained, api), checkpoint_id=path)
            fresh = wrapping.wrap_spec(SPEC, api, seed=1)
            state_dicts.dcp_load(fresh, api, path)
            self._assert_restored(
                fresh, expected_params, expected_out, f"dcp.save/dcp.load api={api}"
            )


if __name__ == "__main__":
    multirank.main()
