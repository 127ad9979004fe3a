"""A unit casts its forward inputs to its param dtype; FSDP2 casts its outputs to output_dtype.

``nested_mlp`` with units ``layers.0``, ``layers.1``, ``layers.2`` and a
float32 root. Forward pre-hooks on the first Linear of each unit (and on the
root's ``out``) record the (weight, input) dtypes they see; they sit inside
the units, so they see what FSDP's casts produced.

* FSDP1: ``layers.1`` gets ``MixedPrecision(param_dtype=bf16,
  cast_forward_inputs=True)`` and ``layers.2`` ``MixedPrecision(param_dtype=
  float32, cast_forward_inputs=True)``. Pass: ``layers.1`` computes with bf16
  weights on bf16 inputs although ``layers.0`` hands it float32; ``layers.2``
  gets its bf16 input cast back to float32.
* FSDP2, one bf16 unit: ``layers.1`` gets ``MixedPrecisionPolicy(param_dtype=
  bf16, cast_forward_inputs=True, output_dtype=float32)``, no other unit has a
  policy. Pass: ``layers.1`` computes in bf16 and ``layers.2``, which casts
  nothing, receives float32.
* FSDP2, output_dtype on the root: every unit ``param_dtype=bf16``, the root
  also ``output_dtype=float32``. Pass: every Linear computes in bf16, the last
  one (``out``, in the root) returns bf16, and the model returns float32.

Each case then trains 2 SGD steps and must match a float32 reference trained
without FSDP within bf16's tolerance (``parity.tolerance(bf16)``).
"""

import torch
from absl.testing import parameterized

from testing import multirank
from testing.fsdp import models
from testing.fsdp import params
from testing.fsdp import training
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")
UNITS = ("layers.0", "layers.1", "layers.2")
STEPS = 2
BF16, FP32 = torch.bfloat16, torch.float32
WATCHED = ("layers.0.fc1", "layers.1.fc1", "layers.2.fc1", "out")

FSDP1_CASTS = {
    "layers.1": wrapping.Precision(param_dtype=BF16, reduce_dtype=FP32, cast_forward_inputs=True),
    "layers.2": wrapping.Precision(param_dtype=FP32, cast_forward_inputs=True),
}
FSDP2_ONE_UNIT = {
    "layers.1": wrapping.Precision(
        param_dtype=BF16, reduce_dtype=FP32, cast_forward_inputs=True, output_dtype=FP32
    ),
}
EVERY_UNIT = wrapping.Precision(param_dtype=BF16, reduce_dtype=FP32)
# Only the root casts its output: a unit's float32 output would reach the root's
# bf16 `out` layer uncast (the root casts inputs only at its own forward).
ROOT_OUTPUT = {"": wrapping.Precision(param_dtype=BF16, reduce_dtype=FP32, output_dtype=FP32)}

# What both one-unit cases expect: layers.1 runs in bf16 and casts its input to bf16;
# the units around it, and the root's `out` layer, see float32 weights and inputs.
ONLY_LAYER_1_BF16 = {
    "layers.0.fc1": (FP32, FP32),
    "layers.1.fc1": (BF16, BF16),
    "layers.2.fc1": (FP32, FP32),
    "out": (FP32, FP32),
}

# case name, api, mixed_precision, unit_mixed_precision,
# expected {module: (weight, input) dtypes}, expected dtype of out's output
_CASES = (
    (
        "unit_casts_inputs_fsdp1",
        "fsdp1",
        None,
        FSDP1_CASTS,
        ONLY_LAYER_1_BF16,
        FP32,
    ),
    (
        "unit_casts_inputs_and_output_fsdp2",
        "fsdp2",
        None,
        FSDP2_ONE_UNIT,
        ONLY_LAYER_1_BF16,
        FP32,
    ),
    (
        "root_output_dtype_fsdp2",
        "fsdp2",
        EVERY_UNIT,
        ROOT_OUTPUT,
        {name: (BF16, BF16) for name in WATCHED},
        BF16,
    ),
)


class CastForwardInputsTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(*_CASES)
    def test_forward_dtypes_as_configured(
        self, api, mixed_precision, per_unit, expected, out_dtype
    ):
        model = SPEC.build(seed=0)
        seen, outputs, out_outputs = {}, [], set()
        for name in WATCHED:
            model.get_submodule(name).register_forward_pre_hook(
                lambda mod, args, name=name: seen.setdefault(name, set()).add(
                    (mod.weight.dtype, args[0].dtype)
                )
            )
        model.out.register_forward_hook(lambda mod, args, out: out_outputs.add(out.dtype))
        model = wrapping.wrap(
            model,
            api,
            UNITS,
            mixed_precision=mixed_precision,
            unit_mixed_precision=per_unit,
        )
        model.register_forward_hook(lambda mod, args, out: outputs.append(out.dtype))
        losses = training.train(model, SPEC, steps=STEPS)
        ref, ref_losses = training.reference_train(SPEC, steps=STEPS)
        actual = params.full_params(model)  # collective: before any assert

        context = f"api={api} rank={self.rank}"
        for name, dtypes in expected.items():
            self.assertEqual(
                seen.get(name),
                {dtypes},
                f"{context}: (weight, input) dtypes seen by {name} in forward",
            )
        self.assertEqual(out_outputs, {out_dtype}, f"{context}: dtype 'out' returns")
        self.assertLen(outputs, STEPS, f"{context}: forward calls of the model")
        self.assertEqual(set(outputs), {FP32}, f"{context}: dtype of the model's output")
        # Tolerances of the lowest compute dtype (bf16), for every parameter and loss.
        training.assert_matches_reference(
            actual, params.full_params(ref), losses, ref_losses, dtype=BF16, context=context
        )


if __name__ == "__main__":
    multirank.main()
