"""Units with different mixed-precision policies each compute and reduce in their own dtype.

``nested_mlp`` with units ``layers.0`` (float16), ``layers.1`` (float32),
``layers.2`` (bfloat16) and a bfloat16 root, each unit casting its forward
inputs to its param dtype (FSDP1 ``cast_forward_inputs=True``; FSDP2's
default); reduce dtype = param dtype. The root's ``out`` layer runs after
``layers.2``, whose bf16 output matches it (a root runs its own casts only at
its start). Forward pre-hooks on each unit's first Linear and on the root's
``inp`` and ``out`` record the (weight, input) dtypes they see; the gradient
reductions are recorded per step.

Pass: each watched layer sees its unit's dtype for weight and input; each step
reduce-scatters once in float16 (``layers.0``), once in float32 (``layers.1``)
and twice in bfloat16 (``layers.2`` and the root), where at world size 1
FSDP1 all-reduces instead and FSDP2 reduces nothing (``at_world_size``);
gradients reach the optimizer in float32; after 2 SGD steps parameters and losses match a float32
reference trained without FSDP within bf16's tolerance (the loosest of the
three dtypes).
"""

import collections

import torch
from absl.testing import parameterized

from testing import multirank
from testing.fsdp import at_world_size
from testing.fsdp import api_cases
from testing.fsdp import models
from testing.fsdp import params
from testing.fsdp import training
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")
UNITS = ("layers.0", "layers.1", "layers.2")
STEPS = 2
FP16, BF16, FP32 = torch.float16, torch.bfloat16, torch.float32
UNIT_DTYPES = {"layers.0": FP16, "layers.1": FP32, "layers.2": BF16, "": BF16}
POLICIES = {
    name: wrapping.Precision(param_dtype=dtype, cast_forward_inputs=True)
    for name, dtype in UNIT_DTYPES.items()
}
# Watched layer -> the unit whose dtype it computes in.
WATCHED = {
    "inp": "",
    "layers.0.fc1": "layers.0",
    "layers.1.fc1": "layers.1",
    "layers.2.fc1": "layers.2",
    "out": "",
}


class PerUnitPolicyTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_each_unit_computes_in_its_dtype(self, api):
        model = SPEC.build(seed=0)
        seen = collections.defaultdict(set)
        for name in WATCHED:
            model.get_submodule(name).register_forward_pre_hook(
                lambda mod, args, name=name: seen[name].add((mod.weight.dtype, args[0].dtype))
            )
        model = wrapping.wrap(model, api, UNITS, unit_mixed_precision=POLICIES)
        optimizer = training.default_optimizer(model.parameters())
        grad_dtypes = set()

        def record_grads(m, step):
            grad_dtypes.update(p.grad.dtype for p in m.parameters() if p.grad is not None)

        losses, reductions = training.train_recording_reductions(
            model, SPEC, steps=STEPS, optimizer=optimizer, before_step=record_grads
        )
        ref, ref_losses = training.reference_train(SPEC, steps=STEPS)
        actual = params.full_params(model)  # collective: before any assert

        context = f"api={api} rank={self.rank}"
        for name, unit in WATCHED.items():
            dtype = UNIT_DTYPES[unit]
            self.assertEqual(
                seen[name],
                {(dtype, dtype)},
                f"{context}: (weight, input) dtypes seen by {name} (unit {unit or 'root'})",
            )
        kind = at_world_size.gradient_reduction(api, self.world_size)
        # One reduction per unit in its dtype; none where FSDP2 runs on one rank.
        expected = collections.Counter({FP16: 1, FP32: 1, BF16: 2} if kind else {})
        for step, calls in enumerate(reductions):
            self.assertEqual(
                collections.Counter(
                    d
                    for n, d in calls
                    if at_world_size.is_gradient_reduction(n, api, self.world_size)
                ),
                expected,
                f"{context}: {kind} dtypes at step {step}: {calls}",
            )
            self.assertLen(calls, sum(expected.values()), f"{context}: step {step}: {calls}")
        self.assertEqual(grad_dtypes, {FP32}, f"{context}: gradient dtypes after backward")
        # Tolerances of the lowest compute dtype (bf16), for every parameter and loss.
        training.assert_matches_reference(
            actual, params.full_params(ref), losses, ref_losses, dtype=BF16, context=context
        )


if __name__ == "__main__":
    multirank.main()
