"""A unit frozen at the first step and unfrozen later still honours its dtypes.

``nested_mlp`` with policy ``param_dtype=bfloat16, reduce_dtype=float32`` on
every unit; unit ``layers.1`` has ``requires_grad=False`` for step 0 (its first
forward, when FSDP resolves its dtypes lazily) and is unfrozen for steps 1-2.
The optimizer holds every parameter from the start. pytorch#186998: FSDP2 took
the group's reduce dtype from its trainable parameters at that first forward,
found none, and after unfreezing either reduced the unit in bf16 or failed in
backward. torch 2.10 to 2.13 fail in backward at step 1 ("attempting to assign
a gradient with dtype 'c10::BFloat16' to a tensor with grad_dtype 'Float'");
2.14.1, with the upstream fix (falling back to all of the group's parameters),
passes.

Pass, on every step: every gradient reduce-scatter runs in float32 (at world
size 1: FSDP1's all-reduce; FSDP2 reduces nothing, see ``at_world_size``); every
gradient handed to the optimizer is float32, and ``layers.1`` has none at step
0 and all of them later; at the end the parameters and the per-step losses
equal ``mixed_precision_reference.train``: the same bf16 computation per rank, gradients
averaged in float32, ``layers.1`` frozen at step 0. Tolerance ``rtol=1e-5,
atol=1e-6``: FSDP matches that reference up to the float32 reduction order,
while one step of a bf16 reduction already moves parameters by about 1e-5 to
1e-4 (bf16's relative rounding 2**-9 on gradients up to 0.15, times lr 0.05).
FSDP1 needs ``use_orig_params=True`` to change ``requires_grad`` after wrapping.
"""

import torch
from absl.testing import parameterized

from testing import known_failures
from testing import multirank
from testing.fsdp import at_world_size
from testing.fsdp import api_cases
from testing.fsdp import models
from fsdp.precision.fixtures import mixed_precision_reference
from testing.fsdp import params
from testing.fsdp import parity
from testing.fsdp import training
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")
UNIT = "layers.1"
STEPS = 3
FP32 = torch.float32
POLICY = wrapping.Precision(param_dtype=torch.bfloat16, reduce_dtype=FP32)
RTOL, ATOL = 1e-5, 1e-6


def _set_frozen(model, step):
    """``layers.1`` frozen at step 0 only."""
    model.get_submodule(UNIT).requires_grad_(step != 0)


def _in_unit(name):
    return name.startswith(UNIT + ".")


class UnfreezeTest(multirank.MultiRankTestCase, parameterized.TestCase):
    known_failures = {
        "test_unfrozen_unit_keeps_reduce_dtype_fsdp2": known_failures.TorchBug(
            "pytorch#186998",
            "FSDP2 resolves a unit's reduce dtype at its first forward from its trainable "
            "parameters; a unit frozen then gets the param dtype, and after unfreezing its "
            "backward fails (grad dtype bf16 vs float32)",
            affected=">=2.10,<2.14.1",
            fixed_by="pytorch#187376",
        ),
    }

    @parameterized.named_parameters(
        *api_cases.api_cases_with(fsdp1={"use_orig_params": True}, fsdp2={})
    )
    def test_unfrozen_unit_keeps_reduce_dtype(self, api, options):
        model = wrapping.wrap_spec(SPEC, api, mixed_precision=POLICY, **options)
        optimizer = training.default_optimizer(model.parameters())
        grads_seen = {}

        def record_grads(m, step):
            # Full gradients: an FSDP1 rank holds no .grad for a parameter outside its shard.
            grads_seen[step] = {
                n: g.dtype for n, g in params.full_grads(m).items() if g is not None
            }

        losses, reductions = training.train_recording_reductions(
            model,
            SPEC,
            steps=STEPS,
            optimizer=optimizer,
            before_step=record_grads,
            before_each=lambda step: _set_frozen(model, step),
        )
        ref, ref_losses = mixed_precision_reference.train(
            SPEC,
            steps=STEPS,
            world_size=self.world_size,
            param_dtype=torch.bfloat16,
            optim_fn=training.default_optimizer,
            before_forward=_set_frozen,
        )
        actual = params.full_params(model)  # collective: before any assert

        names = [params.clean_name(n) for n, _ in ref.named_parameters()]
        for step in range(STEPS):
            context = f"api={api} step {step} ({UNIT} {'frozen' if step == 0 else 'unfrozen'})"
            at_world_size.check_gradient_reductions(
                reductions[step], api, self.world_size, FP32, context
            )
            expected_names = [n for n in names if step != 0 or not _in_unit(n)]
            self.assertEqual(
                sorted(grads_seen[step]),
                sorted(expected_names),
                f"{context}: parameters with a gradient",
            )
            self.assertEqual(
                set(grads_seen[step].values()),
                {FP32},
                f"{context}: gradient dtypes {grads_seen[step]}",
            )
        parity.assert_params_close(
            actual,
            params.full_params(ref),
            rtol=RTOL,
            atol=ATOL,
            rank=self.rank,
            context=f"api={api} after {STEPS} steps",
        )
        parity.assert_tensors_close(
            losses, ref_losses, name="loss", rtol=RTOL, atol=ATOL, context=f"api={api}"
        )


if __name__ == "__main__":
    multirank.main()
