"""A model built on the meta device and materialized by FSDP equals eager initialization.

The model's modules re-seed the RNG in ``reset_parameters`` (one seed per
module), so initialization is deterministic per parameter wherever and in
whatever order it runs. The eager model is constructed directly on the rank's
device; the meta model is constructed under ``torch.device("meta")`` and then
materialized:

* FSDP1 without ``param_init_fn``: FSDP calls ``to_empty`` and
  ``reset_parameters()`` on each meta module;
* FSDP1 with ``param_init_fn``: FSDP calls it per module (it materializes with
  ``to_empty(recurse=False)`` and calls ``reset_parameters()``);
* FSDP2: ``fully_shard`` on the meta model, ``to_empty(device=...)`` and
  ``reset_parameters()`` (what ``wrapping.wrap_spec(init_device="meta")``
  does), then the eager model's full state dict is loaded with
  ``set_model_state_dict`` (``reset_parameters`` on sharded DTensors draws
  per-shard random numbers, so the full state dict is how FSDP2 gets
  eager-identical values).

The materialized model must have the eager model's full parameters, sharded
(no meta tensors left), and train two steps on rank-distinct data exactly like
the eager-initialized FSDP model.
"""

import dataclasses

import torch
from absl.testing import parameterized
from torch import nn
from torch.distributed.checkpoint import state_dict as dcp_state_dict

from testing import multirank
from testing.fsdp import compat, models, params, parity, training, wrapping

UNITS = ("layers.0", "layers.1")


class _SeededLinear(nn.Linear):
    """nn.Linear whose reset_parameters re-seeds the RNG with its own seed first."""

    def __init__(self, in_features, out_features, init_seed):
        object.__setattr__(self, "init_seed", init_seed)  # before nn.Module.__init__
        super().__init__(in_features, out_features)

    def reset_parameters(self):
        torch.manual_seed(self.init_seed)  # seeds the CPU and accelerator generators
        super().reset_parameters()


class _SeededMLP(nn.Module):
    """8 -> 16 -> 16 -> 4 MLP of _SeededLinear layers (one seed per layer)."""

    def __init__(self):
        super().__init__()
        self.inp = _SeededLinear(8, 16, init_seed=11)
        self.layers = nn.Sequential(
            _SeededLinear(16, 16, init_seed=12), _SeededLinear(16, 16, init_seed=13)
        )
        self.out = _SeededLinear(16, 4, init_seed=14)

    def forward(self, x):
        x = torch.relu(self.inp(x))
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.out(x)


# Batches and loss of nested_mlp (8 inputs, 4 outputs); model and units our own.
SPEC = dataclasses.replace(
    models.get("nested_mlp"), name="seeded_mlp", factory=_SeededMLP, units=UNITS
)


def _materialize_and_reset(device):
    """An FSDP1 param_init_fn: storage on ``device`` for one module, then its init."""

    def init(module):
        module.to_empty(device=device, recurse=False)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()

    return init


class MetaInitTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _assert_like_eager(self, model, api, what):
        for name, p in model.named_parameters():
            self.assertFalse(p.is_meta, f"{name} is still on the meta device ({what})")
        eager = wrapping.wrap_spec(SPEC, api, init_device=self.device)
        parity.assert_params_close(
            params.full_params(model),
            params.full_params(eager),
            rtol=0,
            atol=0,
            context=f"after init, {what}",
        )
        training.train(model, SPEC, steps=2, seed=0)
        training.train(eager, SPEC, steps=2, seed=0)
        parity.assert_params_close(
            params.full_params(model), params.full_params(eager), context=f"after 2 steps, {what}"
        )

    def test_meta_init_reset_parameters_matches_eager_fsdp1(self):
        model = wrapping.wrap_spec(SPEC, "fsdp1", init_device="meta")
        self._assert_like_eager(model, "fsdp1", "FSDP1 default materialization")

    def test_meta_init_param_init_fn_matches_eager_fsdp1(self):
        model = wrapping.wrap_spec(
            SPEC,
            "fsdp1",
            init_device="meta",
            extra={"param_init_fn": _materialize_and_reset(self.device)},
        )
        self._assert_like_eager(model, "fsdp1", "FSDP1 param_init_fn")

    def test_meta_init_to_empty_and_full_state_dict_matches_eager_fsdp2(self):
        model = wrapping.wrap_spec(SPEC, "fsdp2", init_device="meta")
        with torch.device(self.device):
            reference = SPEC.build(seed=0).state_dict()  # same on every rank (seeded)
        dcp_state_dict.set_model_state_dict(
            model, reference, options=dcp_state_dict.StateDictOptions(full_state_dict=True)
        )
        for name, p in model.named_parameters():
            self.assertTrue(compat.is_dtensor(p), f"{name} is no longer sharded")
            self.assertEqual(p.to_local().device.type, self.device.type, name)
        self._assert_like_eager(model, "fsdp2", "FSDP2 to_empty + set_model_state_dict")


if __name__ == "__main__":
    multirank.main()
