"""Writes to the full parameters reach the sharded parameters on every rank.

A sharded model is trained for two SGD steps on rank-distinct data; then every
parameter ``p`` is rewritten to ``2 * p + 1``:

* FSDP1: inside ``FSDP.summon_full_params(model, writeback=True)`` (with and
  without ``use_orig_params``). After the context exits and the parameters are
  resharded, each rank's shard must hold the written values.
* FSDP2: FSDP2's ``unshard()`` has no writeback (``reshard()`` frees the
  unsharded parameters and the sharded DTensors stay the source of truth), so
  the write goes to the sharded DTensor parameters, and ``unshard()`` on every
  ``FSDPModule`` must then show the written full values on every rank.

Either way the full parameters afterwards must be ``2 * trained + 1`` on every
rank, and the model's outputs on rank-distinct inputs must equal a plain model
holding those values.
"""

import torch
from absl.testing import parameterized

from testing import multirank
from testing.fsdp import api_cases, compat, data, models, params, parity, training, wrapping

SPEC = models.get("nested_mlp")


def _rewrite(tensor):
    """The write under test: ``t <- 2 t + 1`` in place."""
    tensor.mul_(2).add_(1)


class SummonFullParamsTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _trained(self, api, **options):
        model = wrapping.wrap_spec(SPEC, api, **options)
        training.train(model, SPEC, steps=2, seed=0)
        before = params.full_params(model)
        return model, {name: 2 * t + 1 for name, t in before.items()}

    def _assert_written(self, model, expected, what):
        written = params.full_params(model)
        parity.assert_params_close(written, expected, context=f"after resharding, {what}")
        parity.assert_same_across_ranks(written, name=f"full parameters, {what}")
        plain = SPEC.build(seed=1).to(self.device)
        plain.load_state_dict(expected)
        inputs, _ = data.rank_batch(SPEC, seed=0, rank=self.rank, step=api_cases.EVAL_STEP)
        with torch.no_grad():
            parity.assert_tensors_close(
                model(inputs), plain(inputs), name=f"output vs plain model with the write, {what}"
            )

    @parameterized.named_parameters(("fsdp1", False), ("use_orig_params_fsdp1", True))
    def test_summon_full_params_writeback_visible_after_reshard(self, use_orig_params):
        model, expected = self._trained("fsdp1", use_orig_params=use_orig_params)
        with compat.FSDP.summon_full_params(model, writeback=True):
            with torch.no_grad():
                for name, p in model.named_parameters():
                    full_shape = tuple(expected[params.clean_name(name)].shape)
                    self.assertEqual(
                        tuple(p.shape), full_shape, f"{name} is not full inside summon_full_params"
                    )
                    _rewrite(p)
        self._assert_written(model, expected, f"use_orig_params={use_orig_params}")

    def test_write_to_sharded_params_visible_after_unshard_fsdp2(self):
        model, expected = self._trained("fsdp2")
        with torch.no_grad():
            for p in model.parameters():
                _rewrite(p)  # elementwise on each rank's DTensor shard
        fsdp_modules = [m for m in model.modules() if isinstance(m, compat.FSDPModule)]
        for module in fsdp_modules:
            module.unshard()
        try:
            seen = {
                params.clean_name(n): p.detach().to("cpu", copy=True)
                for n, p in model.named_parameters()
            }
            for name, p in model.named_parameters():
                self.assertFalse(compat.is_dtensor(p), f"{name} still sharded after unshard()")
            parity.assert_params_close(seen, expected, context="unsharded after the write")
        finally:
            for module in fsdp_modules:
                module.reshard()
        self._assert_written(model, expected, "FSDP2")


if __name__ == "__main__":
    multirank.main()
