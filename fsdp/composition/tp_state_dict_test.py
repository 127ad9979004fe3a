"""State dicts of an FSDP2 + tensor-parallel model round-trip, and reshard through DCP.

``tensor_parallel.SPEC`` (a one-block transformer) is split over ``tp`` and sharded over ``dp``
(``tensor_parallel.shard_2d``, ``sequence_parallel`` plan, 2 x 2 at world size 4) and
trained one AdamW step on data distinct per data-parallel group. Then:

* full state dict: ``get_model_state_dict(full_state_dict=True)`` holds plain tensors
  equal, bit for bit, to the gathered parameters; ``set_model_state_dict`` of it into
  a fresh 2-D model gives the same parameters, placed as requested;
* sharded state dict: ``model.state_dict()`` holds DTensors with the parameters'
  meshes and placements; loading it into a fresh 2-D model reproduces every local
  shard exactly;
* DCP: model and AdamW state saved with ``dcp.save`` on ``(dp, tp) = 2 x 2`` load with
  ``dcp.load`` into the same model laid out ``1 x N`` (tensor parallelism only) and
  ``N x 1`` (FSDP only): full parameters and optimizer state equal the saved ones
  exactly, every parameter is placed as the new layout requests, and each rank's
  local shard is its chunk of the saved full value.
"""

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import state_dict as dsd

from testing import dist_helpers
from testing import multirank
from fsdp.composition.fixtures import tensor_parallel
from testing.fsdp import compat, meshes, params, parity, state_dicts
from testing.fsdp import training

SPEC = tensor_parallel.SPEC
PLAN = "sequence_parallel"
STEPS = 1
FULL = dsd.StateDictOptions(full_state_dict=True)


def adamw(parameters):
    """AdamW: two state tensors per parameter, both sharded like it."""
    return torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.01)


# (name, (dp, tp) shape of the loading side at world size N)
_TARGETS = (("tp_only", lambda n: (1, n)), ("fsdp_only", lambda n: (n, 1)))


class TpStateDictTest(multirank.MultiRankTestCase):
    def _trained(self):
        """A 2-D model and its optimizer after :data:`STEPS` steps; also its mesh."""
        mesh = meshes.dp_tp_mesh(meshes.dp_tp_shape(self.world_size), self.device.type)
        model = tensor_parallel.shard_2d(mesh, PLAN)
        optimizer = adamw(model.parameters())
        training.train(
            model,
            SPEC,
            steps=STEPS,
            optimizer=optimizer,
            data_rank=meshes.data_rank(mesh),
        )
        return model, optimizer, mesh

    def test_full_and_sharded_state_dicts_round_trip_fsdp2(self):
        model, _, mesh = self._trained()
        saved = params.full_params(model)
        full = dsd.get_model_state_dict(model, options=FULL)
        # Read before loading: set_model_state_dict(full_state_dict=True) replaces the
        # given dict's values with the DTensors it distributed (torch 2.13).
        dtensors = sorted(k for k, v in full.items() if compat.is_dtensor(v))
        as_saved = {params.clean_name(k): v.detach().to("cpu", copy=True) for k, v in full.items()}
        from_full = tensor_parallel.shard_2d(mesh, PLAN, seed=1)
        dsd.set_model_state_dict(from_full, full, options=FULL)
        sharded = model.state_dict()
        from_sharded = tensor_parallel.shard_2d(mesh, PLAN, seed=1)
        from_sharded.load_state_dict(sharded)
        loaded_full = params.full_params(from_full)  # collectives: before any assertion
        loaded_sharded = params.full_params(from_sharded)

        self.assertEmpty(dtensors, "a full state dict must hold plain tensors")
        parity.assert_params_close(as_saved, saved, rtol=0, atol=0, context="full state dict")
        parity.assert_params_close(loaded_full, saved, rtol=0, atol=0, context="full, loaded")
        tensor_parallel.assert_layout(from_full, PLAN, mesh, saved, "full state dict loaded")
        for name, p in model.named_parameters():
            value = sharded[name]
            self.assertTrue(compat.is_dtensor(value), f"{name}: not a DTensor")
            self.assertEqual(
                (value.device_mesh, tuple(value.placements)),
                (p.device_mesh, tuple(p.placements)),
                f"{name}: sharded state dict entry laid out unlike its parameter",
            )
        parity.assert_params_close(loaded_sharded, saved, rtol=0, atol=0, context="sharded, loaded")
        tensor_parallel.assert_layout(from_sharded, PLAN, mesh, saved, "sharded state dict loaded")

    def test_dcp_reshards_to_other_layouts_fsdp2(self):
        model, optimizer, _ = self._trained()
        saved = params.full_params(model)
        saved_optim = state_dicts.full_optim_state(model, optimizer)
        failures = parity.DeferredFailures()  # every rank loads every layout
        with dist_helpers.shared_tempdir(prefix="ckpt-") as path:
            dcp.save(
                {
                    "model": dsd.get_model_state_dict(model),
                    "optim": dsd.get_optimizer_state_dict(model, optimizer),
                },
                checkpoint_id=path,
            )
            for name, target in _TARGETS:
                shape = target(self.world_size)
                mesh = meshes.dp_tp_mesh(shape, self.device.type)
                fresh = tensor_parallel.shard_2d(mesh, PLAN, seed=1)
                fresh_optimizer = adamw(fresh.parameters())
                state = {
                    "model": dsd.get_model_state_dict(fresh),
                    "optim": dsd.get_optimizer_state_dict(fresh, fresh_optimizer),
                }
                dcp.load(state, checkpoint_id=path)
                dsd.set_model_state_dict(fresh, state["model"])
                dsd.set_optimizer_state_dict(fresh, fresh_optimizer, state["optim"])
                loaded = params.full_params(fresh)  # collectives: before any assertion
                loaded_optim = state_dicts.full_optim_state(fresh, fresh_optimizer)
                what = (
                    f"saved on (dp, tp) = {meshes.dp_tp_shape(self.world_size)}, "
                    f"loaded on {shape} ({name})"
                )
                with failures.check(what):
                    state_dicts.assert_loaded_exactly(
                        loaded, loaded_optim, saved, saved_optim, what
                    )
                    tensor_parallel.assert_layout(fresh, PLAN, mesh, saved, what)
        failures.raise_if_any()


if __name__ == "__main__":
    multirank.main()
