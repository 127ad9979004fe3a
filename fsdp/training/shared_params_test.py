"""Shared (tied) parameters train like unsharded training where FSDP supports them.

A small transformer ties its embedding and output-projection weights. FSDP1
supports the tie when both modules fall in the same unit, here the root (with
and without ``use_orig_params``); FSDP2 supports it with both modules in the
root, or grouped into one unit with ``fully_shard([embed, lm_head])``. Each must
keep the tie (one parameter, two uses) and, over three SGD steps on
rank-distinct data, match the model trained without FSDP on all ranks' data,
buffers included. FSDP2 given the tied modules as separate units must either
refuse it or still train correctly; torch 2.12 and newer refuse with a ValueError.

Known torch bug: torch 2.10 and 2.11 accept the separate units and train wrongly
(27 of 29 parameters diverge on 2.11, measured on 2 H200s; 2.10 fails on CPU);
that case is listed in ``known_failures`` for those releases, so it must still
fail there and the report explains it.
"""

from absl.testing import parameterized

from testing import known_failures
from testing import multirank
from testing.fsdp import compat
from testing.fsdp import models
from testing.fsdp import params
from testing.fsdp import parity
from testing.fsdp import training
from testing.fsdp import wrapping

SPEC = models.get("tied_transformer")
STEPS = 3


def _shard_fsdp2(model, groups, device):
    """fully_shard each group (a module or a list of modules, by name), then the root."""
    mesh = compat.init_device_mesh(device.type, (compat.world_size(),))
    model = model.to(device)
    for group in groups:
        modules = [model.get_submodule(n) for n in group]
        compat.fully_shard(modules if len(modules) > 1 else modules[0], mesh=mesh)
    for unit in SPEC.units:
        compat.fully_shard(model.get_submodule(unit), mesh=mesh)
    compat.fully_shard(model, mesh=mesh)
    return model


class SharedParamsTest(multirank.MultiRankTestCase, parameterized.TestCase):
    known_failures = {
        "test_tied_modules_in_separate_units_refused_or_correct_fsdp2": known_failures.TorchBug(
            "FSDP2 tied weight split across units",
            "fully_shard(embed) and fully_shard(lm_head) sharing one weight are accepted and "
            "train wrongly (from torch 2.12 on they are refused with an error)",
            affected=">=2.10,<2.12",
            fixed_by="PRs #176257, #179532",
        ),
    }

    def _check_trains_like_reference(self, model, context):
        self.assertIs(model.lm_head.weight, model.embed.weight, "tie broken by sharding")
        losses = training.train(model, SPEC, steps=STEPS)
        ref, ref_losses = training.reference_train(SPEC, steps=STEPS)
        actual = params.full_params(model, buffers=True)  # tied weight once, as in ref
        parity.assert_params_close(actual, params.full_params(ref, buffers=True), context=context)
        parity.assert_tensors_close(losses, ref_losses, name="loss", context=context)

    @parameterized.named_parameters(
        ("fsdp1", "fsdp1", {}),
        ("orig_params_fsdp1", "fsdp1", {"use_orig_params": True}),
        ("fsdp2", "fsdp2", {}),
    )
    def test_tied_params_in_root_match_reference(self, api, options):
        model = wrapping.wrap_spec(SPEC, api, **options)
        inner = model.module if api == "fsdp1" else model
        self.assertIs(inner.lm_head.weight, inner.embed.weight, "tie broken by wrapping")
        losses = training.train(model, SPEC, steps=STEPS)
        ref, ref_losses = training.reference_train(SPEC, steps=STEPS)
        actual = params.full_params(model, buffers=True)
        context = f"api={api} {options}"
        parity.assert_params_close(actual, params.full_params(ref, buffers=True), context=context)
        parity.assert_tensors_close(losses, ref_losses, name="loss", context=context)

    def test_tied_modules_grouped_in_one_unit_match_reference_fsdp2(self):
        model = _shard_fsdp2(SPEC.build(seed=0), [("embed", "lm_head")], self.device)
        self._check_trains_like_reference(model, "fully_shard([embed, lm_head])")

    def test_tied_modules_in_separate_units_refused_or_correct_fsdp2(self):
        # torch 2.13 refuses at the first forward (lazy initialization), not in fully_shard.
        try:
            model = _shard_fsdp2(SPEC.build(seed=0), [("embed",), ("lm_head",)], self.device)
            losses = training.train(model, SPEC, steps=STEPS)
        except (ValueError, RuntimeError) as e:
            self.assertIn("shared", str(e).lower(), f"refused, but for another reason: {e}")
            return
        ref, ref_losses = training.reference_train(SPEC, steps=STEPS)
        actual = params.full_params(model, buffers=True)
        context = "accepted fully_shard(embed); fully_shard(lm_head)"
        parity.assert_params_close(actual, params.full_params(ref, buffers=True), context=context)
        parity.assert_tensors_close(losses, ref_losses, name="loss", context=context)


if __name__ == "__main__":
    multirank.main()
