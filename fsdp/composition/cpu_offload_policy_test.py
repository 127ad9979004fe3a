"""FSDP2's ``CPUOffloadPolicy`` keeps shards and gradients on CPU and trains like the reference.

``nested_mlp`` under ``fully_shard(..., offload_policy=CPUOffloadPolicy(...))`` on every
unit and the root trains 3 SGD steps on rank-distinct data, one step at a time. The
policy is legal on a CPU host too (computation then stays on CPU); memory is pinned
only where an accelerator exists, since pinning needs one (``CPUOffloadPolicy()``'s
default ``pin_memory=True`` fails on a CPU-only host with "Cannot access accelerator
device when none is available").

Pass, at every step: after backward every sharded parameter and gradient lives on CPU,
the full gradients equal the unsharded reference's gradients of that step (float32
tolerance), and they are fresh: computed that step, not accumulated over earlier ones
(the optimizer's ``zero_grad`` leaves none, and each step's gradients match that step's
reference alone); after the optimizer step the full parameters equal the reference's
and still live on CPU.
"""

import torch

from testing import multirank
from testing.fsdp import compat, models, params, parity, training, wrapping

SPEC = models.get("nested_mlp")
STEPS = 3


class CpuOffloadPolicyTest(multirank.MultiRankTestCase):
    def test_offloaded_training_matches_reference_each_step_fsdp2(self):
        policy = compat.CPUOffloadPolicy(pin_memory=self.device.type != "cpu")
        model = wrapping.wrap_spec(SPEC, "fsdp2", extra={"offload_policy": policy})
        optimizer = training.default_optimizer(model.parameters())
        reference = SPEC.build(0).to(self.device)
        ref_optimizer = training.default_optimizer(reference.parameters())
        seen = []

        def record(m, step):
            seen.append(
                (
                    params.local_device_types(m),
                    params.local_device_types(m, grads=True),
                    params.full_grads(m),
                )
            )

        def record_ref(m, step):
            seen[-1] += (params.full_grads(m),)

        for step in range(STEPS):
            left_over = sorted(n for n, p in model.named_parameters() if p.grad is not None)
            training.train(model, SPEC, steps=[step], optimizer=optimizer, before_step=record)
            training.reference_train(
                SPEC, steps=[step], model=reference, optimizer=ref_optimizer, before_step=record_ref
            )
            actual = params.full_params(model)  # collective: before any assertion
            context = f"step {step}"
            self.assertEqual(left_over, [], f"{context}: gradients left from the step before")
            placed, grad_placed, grads, ref_grads = seen[-1]
            self.assertEqual(set(placed.values()), {"cpu"}, f"{context}: shards on {placed}")
            self.assertEqual(
                set(grad_placed.values()), {"cpu"}, f"{context}: grads on {grad_placed}"
            )
            self.assertEqual(
                set(params.local_device_types(model).values()), {"cpu"}, f"{context}: after step"
            )
            parity.assert_params_close(grads, ref_grads, what="gradient", context=context)
            parity.assert_params_close(actual, params.full_params(reference), context=context)
        self.assertTrue(all(torch.is_tensor(g) for g in seen[-1][2].values()), "missing grads")


if __name__ == "__main__":
    multirank.main()
