"""Full and sharded state dicts of a hybridly sharded model restore it exactly.

A ``nested_mlp`` model is sharded hybridly (FSDP1 ``HYBRID_SHARD`` on a 2-D
``device_mesh``; FSDP2 ``fully_shard`` on a 2-D mesh) on
``testing.fsdp.meshes.hybrid_shape`` (2 x 2 at world size 4, 4 x 2 at 8; at
prime N, N x 1 for FSDP2 and 1 x N for FSDP1, whose N x 1 case is a known failure of
parity_test) and trained for 2 SGD steps on rank-distinct data. Then

* full: ``get_model_state_dict(..., full_state_dict=True)`` on every rank, loaded
  with ``set_model_state_dict(..., full_state_dict=True)``;
* sharded: the native sharded state dict (FSDP1 ``SHARDED_STATE_DICT``, FSDP2
  DTensors), loaded in memory, and also written with ``dcp.save`` (replicas hold
  equal shards, which dcp writes once) and read back with ``dcp.load``

into a fresh hybridly sharded model built from another seed. Pass: every value
of the sharded state dict is sharded (holds less than the full tensor when the
shard groups have more than one rank); on every rank the loaded model's full
parameters equal the trained model's exactly, and so do its outputs on a batch
no training step used (``api_cases.EVAL_STEP``). A replica that loads another
replica's shard, or a stale or missing one, fails on that rank.
"""

import torch
import torch.distributed.checkpoint as dcp
from absl.testing import parameterized
from torch.distributed.checkpoint import state_dict as dcp_state_dict

from testing import dist_helpers, multirank
from testing.fsdp import api_cases, data, meshes, models, params, parity, state_dicts, training
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")


class HsdpStateDictTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _shape(self, api):
        return meshes.hybrid_shape(self.world_size, min_shard=2 if api == "fsdp1" else 1)

    def _wrap(self, api, seed):
        options = meshes.hsdp_wrap_options(api, self._shape(api), self.device.type)
        return wrapping.wrap_spec(SPEC, api, seed=seed, **options)

    def _context(self, api, what):
        return f"api={api} mesh={meshes.shape_name(self._shape(api))} {what}"

    def _trained(self, api):
        model = self._wrap(api, seed=0)
        training.train(model, SPEC, steps=2, seed=0)
        inputs, _ = data.rank_batch(SPEC, seed=0, rank=self.rank, step=api_cases.EVAL_STEP)
        with torch.no_grad():
            outputs = model(inputs)
        return model, params.full_params(model), inputs, outputs

    def _restored(self, loaded, inputs):
        """Full parameters and eval outputs of a loaded model (both collectives)."""
        loaded_params = params.full_params(loaded)
        with torch.no_grad():
            return loaded_params, loaded(inputs)

    def _assert_restored(self, failures, restored, expected_params, expected_out, context):
        loaded_params, out = restored
        with failures.check(context):
            parity.assert_params_close(
                loaded_params, expected_params, rtol=0, atol=0, context=context
            )
            parity.assert_tensors_close(
                out, expected_out, rtol=0, atol=0, name=f"rank {self.rank} eval output, {context}"
            )

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_hsdp_full_state_dict_round_trip(self, api):
        trained, expected, inputs, outputs = self._trained(api)
        state = dcp_state_dict.get_model_state_dict(
            trained, options=dcp_state_dict.StateDictOptions(full_state_dict=True)
        )
        self.assertEqual(sorted(state), sorted(expected), f"rank {self.rank}: state dict keys")
        fresh = self._wrap(api, seed=1)
        dcp_state_dict.set_model_state_dict(
            fresh, state, options=dcp_state_dict.StateDictOptions(full_state_dict=True)
        )
        failures = parity.DeferredFailures()
        self._assert_restored(
            failures,
            self._restored(fresh, inputs),
            expected,
            outputs,
            self._context(api, "full state dict"),
        )
        failures.raise_if_any()

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_hsdp_sharded_state_dict_round_trip(self, api):
        trained, expected, inputs, outputs = self._trained(api)
        state = state_dicts.sharded_state_dict(trained, api)
        self.assertEqual(sorted(state), sorted(expected), f"rank {self.rank}: state dict keys")
        if self._shape(api)[1] > 1:
            for name, tensor in state.items():
                self.assertLess(
                    state_dicts.local_numel(tensor),
                    expected[name].numel(),
                    f"rank {self.rank}: {name} holds the whole tensor",
                )
        fresh = self._wrap(api, seed=1)
        state_dicts.load_sharded_state_dict(fresh, api, state)
        in_memory = self._restored(fresh, inputs)
        with dist_helpers.shared_tempdir(prefix="hsdp-ckpt-") as path:
            dcp.save(state_dicts.sharded_state_dict(trained, api), checkpoint_id=path)
            from_disk = self._wrap(api, seed=2)
            state_dicts.dcp_load(from_disk, api, path)
            on_disk = self._restored(from_disk, inputs)
        # Every rank has run every collective: a failure on some ranks cannot strand others.
        failures = parity.DeferredFailures()
        self._assert_restored(
            failures,
            in_memory,
            expected,
            outputs,
            self._context(api, "sharded state dict, in memory"),
        )
        self._assert_restored(
            failures,
            on_disk,
            expected,
            outputs,
            self._context(api, "sharded state dict, dcp.save/dcp.load"),
        )
        failures.raise_if_any()


if __name__ == "__main__":
    multirank.main()
