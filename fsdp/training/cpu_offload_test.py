"""CPU offload of parameters trains like unsharded training, computing on the device.

FSDP1 ``CPUOffload(offload_params=True)`` and FSDP2 ``CPUOffloadPolicy()``: the
sharded parameters and their gradients live on CPU between steps, while a
forward pre-hook sees the unsharded weights on the rank's accelerator. Three
SGD steps on rank-distinct data must match a model trained without FSDP on all
ranks' data. Torch offloads only to and from an accelerator (on a CPU-only
device it fails with "Cannot access accelerator device when none is
available"), so the CPU target is disabled in BUILD.bazel.
"""

from absl.testing import parameterized

from testing import multirank
from testing.fsdp import api_cases
from testing.fsdp import models
from testing.fsdp import params
from testing.fsdp import parity
from testing.fsdp import training
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")
STEPS = 3


def _present(device_types):
    """Leaves out missing gradients: an FSDP1 rank has none for parameters outside its shard."""
    return {name: kind for name, kind in device_types.items() if kind is not None}


class CpuOffloadTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_offloaded_params_match_reference(self, api):
        model = SPEC.build(seed=0)
        compute_devices = []
        model.layers[1].fc1.register_forward_pre_hook(
            lambda m, args: compute_devices.append((m.weight.device.type, args[0].device.type))
        )
        model = wrapping.wrap(model, api, SPEC.units, cpu_offload=True)
        between_steps = [params.local_device_types(model)]

        def on_cpu_after_backward(m, step):
            between_steps.append(params.local_device_types(m))
            grads = _present(params.local_device_types(m, grads=True))
            self.assertNotEmpty(grads, f"no sharded gradients at step {step}")
            self.assertEqual(
                set(grads.values()), {"cpu"}, f"sharded gradient devices at step {step}: {grads}"
            )

        losses = training.train(model, SPEC, steps=STEPS, before_step=on_cpu_after_backward)
        between_steps.append(params.local_device_types(model))
        ref, ref_losses = training.reference_train(SPEC, steps=STEPS)
        actual = params.full_params(model)

        for i, placed in enumerate(between_steps):
            self.assertEqual(
                set(placed.values()), {"cpu"}, f"sharded parameter devices (snapshot {i}): {placed}"
            )
        expected = [(self.device.type, self.device.type)] * STEPS
        self.assertEqual(compute_devices, expected, "(weight, input) devices in forward")
        parity.assert_params_close(actual, params.full_params(ref), context=f"api={api}")
        parity.assert_tensors_close(losses, ref_losses, name="loss")


if __name__ == "__main__":
    multirank.main()
