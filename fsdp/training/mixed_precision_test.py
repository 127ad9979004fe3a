"""Mixed precision computes and reduces in the configured dtypes.

Forward hooks on a root-level layer and on a layer inside a nested unit record
the dtype of the weights and inputs each sees during forward; the reduce-scatter
collective is intercepted to record the dtype of the gradients it reduces (at
world size 1, FSDP1's all-reduce; FSDP2 must reduce nothing there, see
``at_world_size``); after backward the sharded gradients must be back in the
parameters' float32. Two policies: everything in one low-precision dtype, and
low-precision parameters with float32 reduction. FSDP1 also casts buffers
(``buffer_dtype``), checked on a buffer read in forward. Training must stay
within the low-precision tolerance of a float32 reference trained without FSDP
on all ranks' data.
"""

import torch
from absl.testing import parameterized

from testing import multirank
from testing.fsdp import at_world_size
from testing.fsdp import collective_spy
from testing.fsdp import compat
from testing.fsdp import models
from testing.fsdp import params
from testing.fsdp import parity
from testing.fsdp import training
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")
TIED = models.get("tied_transformer")
STEPS = 2


def _record_forward_dtypes(module, seen, label):
    """Records ``(label, weight dtype, input dtype)`` each time ``module`` runs forward."""

    def hook(mod, args):
        seen.append((label, mod.weight.dtype, args[0].dtype))

    return module.register_forward_pre_hook(hook)


def _policy(api, param_dtype, reduce_dtype):
    """The API's mixed-precision option as an ``extra`` dict for ``wrapping.wrap``."""
    if api == "fsdp1":
        return {
            "mixed_precision": compat.MixedPrecision(
                param_dtype=param_dtype, reduce_dtype=reduce_dtype, buffer_dtype=param_dtype
            )
        }
    return {
        "mp_policy": compat.MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    }


_CASES = []
for _api in ("fsdp1", "fsdp2"):
    for _pname, _pdt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        _CASES.append((f"{_pname}_params_{_pname}_reduce_{_api}", _api, _pdt, _pdt))
    _CASES.append((f"bf16_params_fp32_reduce_{_api}", _api, torch.bfloat16, torch.float32))


class MixedPrecisionTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(*_CASES)
    def test_forward_and_reduction_use_configured_dtypes(self, api, param_dtype, reduce_dtype):
        model = SPEC.build(seed=0)
        forward_seen, grad_dtypes = [], set()
        _record_forward_dtypes(model.inp, forward_seen, "root layer inp")
        _record_forward_dtypes(model.layers[1].fc1, forward_seen, "unit layer layers.1.fc1")
        model = wrapping.wrap(
            model,
            api,
            SPEC.units,
            extra=_policy(api, param_dtype, reduce_dtype),
        )

        def grads_after_backward(m, step):
            grad_dtypes.update(p.grad.dtype for p in m.parameters() if p.grad is not None)

        spied = at_world_size.reduction_spy_names(self.world_size)
        with collective_spy.record_reductions(spied) as reduce_seen:
            losses = training.train(model, SPEC, steps=STEPS, before_step=grads_after_backward)
        ref, ref_losses = training.reference_train(SPEC, steps=STEPS)
        actual = params.full_params(model)  # collective: before any assert

        self.assertLen(forward_seen, 2 * STEPS)
        for label, weight_dtype, input_dtype in forward_seen:
            self.assertEqual(
                (weight_dtype, input_dtype),
                (param_dtype, param_dtype),
                f"{label}: (weight, input) dtype in forward",
            )
        at_world_size.check_gradient_reductions(
            reduce_seen, api, self.world_size, reduce_dtype, f"api={api}"
        )
        self.assertEqual(grad_dtypes, {torch.float32}, "sharded gradient dtypes after backward")
        parity.assert_params_close(
            actual,
            params.full_params(ref),
            dtype=param_dtype,
            context=f"api={api} param_dtype={param_dtype}",
        )
        parity.assert_tensors_close(losses, ref_losses, name="loss", dtype=param_dtype)

    @parameterized.named_parameters(
        ("bf16_buffers_fsdp1", torch.bfloat16), ("fp32_buffers_fsdp1", torch.float32)
    )
    def test_buffers_cast_to_buffer_dtype(self, buffer_dtype):
        model = TIED.build(seed=0)
        seen = []
        model.register_forward_pre_hook(lambda m, args: seen.append(m.pos.dtype))
        policy = compat.MixedPrecision(
            param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16, buffer_dtype=buffer_dtype
        )
        model = wrapping.wrap(model, "fsdp1", TIED.units, extra={"mixed_precision": policy})
        losses = training.train(model, TIED, steps=STEPS)
        ref, ref_losses = training.reference_train(TIED, steps=STEPS)
        actual = params.full_params(model)
        self.assertEqual(seen, [buffer_dtype] * STEPS, "dtype of buffer 'pos' in forward")
        parity.assert_params_close(actual, params.full_params(ref), dtype=torch.bfloat16)
        parity.assert_tensors_close(losses, ref_losses, name="loss", dtype=torch.bfloat16)


if __name__ == "__main__":
    multirank.main()
