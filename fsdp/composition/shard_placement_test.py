"""FSDP2's ``shard_placement_fn`` shards weights on dim 1 as asked; they train and checkpoint.

``nested_mlp`` is sharded with ``fully_shard(..., shard_placement_fn=fn)`` on every unit
and the root, where ``fn`` asks for ``Shard(1)`` for each 2-D weight and leaves biases
to the default (``None``: ``Shard(0)``). Pass:

* layout: every weight is a DTensor placed ``(Shard(1),)`` whose local shard is, bit for
  bit, this rank's chunk of the full weight along dim 1 (shape and values); every bias
  is placed ``(Shard(0),)`` with its dim-0 chunk;
* training: 3 SGD steps on rank-distinct data match the unsharded reference (float32
  tolerance), and the layout still holds;
* state dicts: the sharded state dict holds DTensors placed like the parameters; loaded
  into a fresh ``Shard(1)`` model it reproduces every parameter exactly; a DCP
  checkpoint of it loads into the same model sharded on dim 0 (the default placement)
  exactly, and the full state dict equals the gathered parameters.
"""

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import state_dict as dsd
from torch.distributed.tensor import Shard

from testing import dist_helpers
from testing import multirank
from testing.fsdp import compat, models, params, parity, state_dicts, training, wrapping

SPEC = models.get("nested_mlp")
STEPS = 3


def _dim1_for_weights(param):
    """``Shard(1)`` for a matrix, ``None`` (FSDP2's default, ``Shard(0)``) otherwise."""
    return Shard(1) if param.ndim == 2 else None


def _wrap(device, placement_fn=_dim1_for_weights, seed=0):
    extra = {"shard_placement_fn": placement_fn} if placement_fn else None
    return wrapping.wrap_spec(SPEC, "fsdp2", seed=seed, device=device, extra=extra)


class ShardPlacementTest(multirank.MultiRankTestCase):
    def _check_layout(self, model, full, context):
        """Placements ``Shard(1)`` (weights) / ``Shard(0)`` (biases) and exact local chunks."""
        wrong, expected_local = {}, {}
        for name, p in model.named_parameters():
            name = params.clean_name(name)
            dim = 1 if p.ndim == 2 else 0
            if tuple(p.placements) != (Shard(dim),):
                wrong[name] = f"asked for (Shard({dim}),), got {tuple(p.placements)}"
            # FSDP2 splits like torch.chunk: ranks past the last chunk hold an empty shard.
            chunks = full[name].chunk(self.world_size, dim)
            own = chunks[self.rank] if self.rank < len(chunks) else full[name].narrow(dim, 0, 0)
            expected_local[name] = own
        if wrong:
            self.fail(
                f"rank {self.rank}: {len(wrong)} parameters placed otherwise than asked "
                f"[{context}]:\n" + "\n".join(f"  {n}: {m}" for n, m in wrong.items())
            )
        local = {params.clean_name(n): p.to_local().cpu() for n, p in model.named_parameters()}
        parity.assert_params_close(
            local, expected_local, rtol=0, atol=0, what="local shard", context=context
        )

    def test_shard_dim1_layout_and_training_fsdp2(self):
        model = _wrap(self.device)
        initial = params.full_params(model)  # collective: before any assertion
        losses = training.train(model, SPEC, steps=STEPS)
        reference, ref_losses = training.reference_train(SPEC, steps=STEPS)
        actual = params.full_params(model)

        self._check_layout(model, actual, "after training")
        parity.assert_params_close(initial, params.full_params(SPEC.build(0)), rtol=0, atol=0)
        training.assert_matches_reference(
            actual,
            params.full_params(reference),
            losses,
            ref_losses,
            context=f"Shard(1) weights, steps={STEPS}",
        )

    def test_shard_dim1_state_dict_round_trips_fsdp2(self):
        model = _wrap(self.device)
        training.train(model, SPEC, steps=1)
        saved = params.full_params(model)
        state = model.state_dict()
        fresh = _wrap(self.device, seed=1)
        fresh.load_state_dict(state)
        full = dsd.get_model_state_dict(model, options=dsd.StateDictOptions(full_state_dict=True))
        full = {k: v.detach().to("cpu", copy=True) for k, v in full.items()}
        dim0 = _wrap(self.device, placement_fn=None, seed=1)
        with dist_helpers.shared_tempdir(prefix="ckpt-") as path:
            dcp.save(state, checkpoint_id=path)
            state_dicts.dcp_load(dim0, "fsdp2", path)
        loaded = params.full_params(fresh)  # collectives: before any assertion
        loaded_dim0 = params.full_params(dim0)

        for name, p in model.named_parameters():
            self.assertTrue(compat.is_dtensor(state[name]), f"{name}: not a DTensor")
            self.assertEqual(tuple(state[name].placements), tuple(p.placements), name)
        self.assertEqual(
            {tuple(p.placements) for p in dim0.parameters()}, {(Shard(0),)}, "default placements"
        )
        parity.assert_params_close(full, saved, rtol=0, atol=0, context="full state dict")
        parity.assert_params_close(loaded, saved, rtol=0, atol=0, context="sharded load")
        self._check_layout(fresh, saved, "sharded state dict loaded")
        parity.assert_params_close(loaded_dim0, saved, rtol=0, atol=0, context="DCP into Shard(0)")


if __name__ == "__main__":
    multirank.main()
