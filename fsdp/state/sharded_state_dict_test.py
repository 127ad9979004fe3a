"""A sharded state dict, directly and through torch.distributed.checkpoint, restores a model.

A model is sharded, trained for two SGD steps on rank-distinct data, and its
sharded state dict is taken: FSDP1 under ``SHARDED_STATE_DICT``, FSDP2 as its
native DTensor state dict. Every value must be a sharded tensor holding only
this rank's part. The dict is loaded (in memory) into a fresh, differently
initialized model; it is also written with ``dcp.save`` and read back with
``dcp.load`` into a fresh model. The loaded model must have the trained full
parameters and give the trained model's outputs on rank-distinct inputs.
Checkpoints live under TEST_TMPDIR and are removed afterwards. Loading at a
different world size is in sharded_state_dict_world_size_test.py.
"""

import contextlib
import os
import shutil
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from absl.testing import parameterized
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import StateDictType

from testing import multirank
from testing.fsdp import compat, data, models, params, parity, training, wrapping

SPEC = models.get("nested_mlp")
EVAL_STEP = 100  # a batch no training step used


@contextlib.contextmanager
def shared_checkpoint_dir():
    """A fresh directory under TEST_TMPDIR, the same on every rank; removed on exit."""
    holder = [tempfile.mkdtemp(prefix="ckpt-", dir=os.environ.get("TEST_TMPDIR"))
              if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    try:
        yield holder[0]
    finally:
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(holder[0], ignore_errors=True)


def _sharded_context(model, api):
    if api == "fsdp1":
        return compat.FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT)
    return contextlib.nullcontext()


def sharded_state_dict(model, api):
    """The model's sharded state dict (FSDP1 SHARDED_STATE_DICT, FSDP2 DTensors)."""
    with _sharded_context(model, api):
        return model.state_dict()


def load_sharded_state_dict(model, api, state):
    """Loads a sharded state dict into a model sharded the same way."""
    with _sharded_context(model, api):
        model.load_state_dict(state)


def dcp_load(model, api, path, process_group=None):
    """Reads a dcp checkpoint into ``model``'s own sharded state dict and loads it."""
    with _sharded_context(model, api):
        state = model.state_dict()
        dcp.load(state, checkpoint_id=path, process_group=process_group)
        model.load_state_dict(state)


def _local_numel(tensor) -> int:
    """Elements this rank holds of a ShardedTensor or DTensor."""
    if compat.is_dtensor(tensor):
        return tensor.to_local().numel()
    return sum(shard.tensor.numel() for shard in tensor.local_shards())


class ShardedStateDictTest(multirank.MultiRankTestCase, parameterized.TestCase):

    def _trained(self, api, **wrap_options):
        model = wrapping.wrap(SPEC.build(seed=0), api, SPEC.units, device=self.device,
                              **wrap_options)
        training.train(model, SPEC, steps=2, seed=0, device=self.device)
        return model

    def _inputs(self):
        inputs, _ = data.rank_batch(SPEC, seed=0, rank=self.rank, step=EVAL_STEP,
                                    device=self.device)
        return inputs

    def _assert_restored(self, loaded, expected_params, expected_out, what):
        parity.assert_params_close(params.full_params(loaded), expected_params, rtol=0,
                                   atol=0, context=what)
        with torch.no_grad():
            out = loaded(self._inputs())
        parity.assert_tensors_close(out, expected_out, rtol=0, atol=0,
                                    name=f"output, {what}")

    def _expected(self, trained):
        expected_params = params.full_params(trained)
        with torch.no_grad():
            expected_out = trained(self._inputs())
        return expected_params, expected_out

    @parameterized.named_parameters(("fsdp1", "fsdp1"), ("fsdp2", "fsdp2"))
    def test_sharded_state_dict_round_trip(self, api):
        trained = self._trained(api)
        expected_params, expected_out = self._expected(trained)
        state = sharded_state_dict(trained, api)
        full_numel = {name: t.numel() for name, t in expected_params.items()}
        self.assertEqual(sorted(state), sorted(full_numel), "sharded state dict keys")
        for name, tensor in state.items():
            self.assertTrue(compat.is_dtensor(tensor) or hasattr(tensor, "local_shards"),
                            f"{name} is a {type(tensor).__name__}, not a sharded tensor")
            self.assertLess(_local_numel(tensor), full_numel[name],
                            f"{name}: rank {self.rank} holds the whole tensor")
        fresh = wrapping.wrap(SPEC.build(seed=1), api, SPEC.units, device=self.device)
        load_sharded_state_dict(fresh, api, state)
        self._assert_restored(fresh, expected_params, expected_out,
                              f"in-memory sharded load api={api}")

    @parameterized.named_parameters(("fsdp1", "fsdp1"), ("fsdp2", "fsdp2"))
    def test_dcp_save_load_round_trip(self, api):
        trained = self._trained(api)
        expected_params, expected_out = self._expected(trained)
        with shared_checkpoint_dir() as path:
            dcp.save(sharded_state_dict(trained, api), checkpoint_id=path)
            fresh = wrapping.wrap(SPEC.build(seed=1), api, SPEC.units, device=self.device)
            dcp_load(fresh, api, path)
            self._assert_restored(fresh, expected_params, expected_out,
                                  f"dcp.save/dcp.load api={api}")


if __name__ == "__main__":
    multirank.main()
