"""Sharded models expose the original parameters (FSDP1 use_orig_params, FSDP2 DTensor).

With FSDP1 ``use_orig_params=True`` and with FSDP2, ``named_parameters()`` lists
the original model's names (wrapper prefixes aside) with the original full
shapes, and each parameter carries its own gradient. That enables what the tests
check against a model trained without FSDP on all ranks' data: per-parameter
gradients, optimizer parameter groups with different learning rates chosen by
name, and frozen (``requires_grad=False``) parameters sharing a unit with
trainable ones (they get no gradient and never change).
"""

import torch
from absl.testing import parameterized

from testing import multirank
from testing.fsdp import api_cases
from testing.fsdp import compat
from testing.fsdp import data
from testing.fsdp import models
from testing.fsdp import params
from testing.fsdp import parity
from testing.fsdp import training
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")
FROZEN = models.get("frozen_backbone")


def _wrap(spec, api, device, units=None):
    """Wraps with original parameters exposed (FSDP1 needs use_orig_params=True)."""
    options = {"use_orig_params": True} if api == "fsdp1" else {}
    return wrapping.wrap_spec(spec, api, units=units, device=device, **options)


def _grouped_sgd(model=None):
    """optim_fn: SGD with lr 0.2 for ``layers.*`` and 0.02 for the rest, chosen by name.

    Names come from ``model.named_parameters()``; without a model (the reference,
    which ``training.reference_train`` builds itself) from the unwrapped model's order.
    """
    named = (
        None
        if model is None
        else {id(p): params.clean_name(n) for n, p in model.named_parameters()}
    )

    def make(parameters):
        parameters = list(parameters)
        if named is None:
            names = [n for n, _ in SPEC.build(seed=0).named_parameters()]
        else:
            names = [named[id(p)] for p in parameters]
        layers = [p for n, p in zip(names, parameters) if n.startswith("layers.")]
        rest = [p for n, p in zip(names, parameters) if not n.startswith("layers.")]
        assert layers and rest, f"grouping by name failed: {names}"
        return torch.optim.SGD(
            [{"params": layers, "lr": 0.2}, {"params": rest}], lr=0.02, momentum=0.9
        )

    return make


class OrigParamsTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_params_and_grads_keep_original_names_and_shapes(self, api):
        model = _wrap(SPEC, api, self.device)
        original = dict(SPEC.build(seed=0).named_parameters())
        names = [params.clean_name(n) for n, _ in model.named_parameters()]
        self.assertEqual(names, list(original))
        if api == "fsdp1":
            with compat.FSDP.summon_full_params(model):
                shapes = {params.clean_name(n): p.shape for n, p in model.named_parameters()}
        else:
            shapes = {params.clean_name(n): p.shape for n, p in model.named_parameters()}
            self.assertTrue(all(compat.is_dtensor(p) for p in model.parameters()))
        self.assertEqual(shapes, {n: p.shape for n, p in original.items()})

        inputs, targets = data.rank_batch(SPEC, seed=0, rank=self.rank, step=0)
        SPEC.loss_fn(model(inputs), targets).backward()
        for name, p in model.named_parameters():
            if p.numel() > 0:  # FSDP1: a rank may hold no piece of a parameter
                self.assertIsNotNone(p.grad, name)
                self.assertEqual(p.grad.shape, p.shape, name)
        grads = params.full_grads(model)
        ref = SPEC.build(seed=0).to(self.device)
        inputs, targets = data.global_batch(SPEC, seed=0, world_size=self.world_size, step=0)
        SPEC.loss_fn(ref(inputs), targets).backward()
        parity.assert_params_close(
            grads, params.full_grads(ref), what="gradient", context=f"api={api}"
        )

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_param_groups_with_different_lr_match_reference(self, api):
        model = _wrap(SPEC, api, self.device)
        losses = training.train(model, SPEC, steps=3, optim_fn=_grouped_sgd(model))
        ref, ref_losses = training.reference_train(SPEC, steps=3, optim_fn=_grouped_sgd())
        actual = params.full_params(model)
        parity.assert_params_close(actual, params.full_params(ref), context=f"api={api}")
        parity.assert_tensors_close(losses, ref_losses, name="loss")

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_frozen_params_in_trained_unit_stay_unchanged(self, api):
        # Root only: the frozen backbone and the trainable head share one unit.
        model = _wrap(FROZEN, api, self.device, units=())
        initial = params.full_params(FROZEN.build(seed=0))
        frozen = [params.clean_name(n) for n, p in model.named_parameters() if not p.requires_grad]
        self.assertEqual(frozen, [n for n in initial if n.startswith("backbone.")])

        def no_frozen_grads(m, step):
            with_grad = [
                n for n, p in m.named_parameters() if not p.requires_grad and p.grad is not None
            ]
            self.assertEqual(with_grad, [], f"frozen parameters with a gradient at step {step}")

        losses = training.train(model, FROZEN, steps=3, before_step=no_frozen_grads)
        ref, ref_losses = training.reference_train(FROZEN, steps=3)
        actual = params.full_params(model)
        parity.assert_unchanged(
            actual, initial, frozen, context=f"api={api} frozen parameters vs initial"
        )
        parity.assert_params_close(actual, params.full_params(ref), context=f"api={api}")
        parity.assert_tensors_close(losses, ref_losses, name="loss")


if __name__ == "__main__":
    multirank.main()
