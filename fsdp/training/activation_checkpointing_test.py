"""Activation checkpointing inside and around FSDP units trains like no checkpointing.

Each residual block of a nested MLP is checkpointed either inside its FSDP unit
(checkpoint applied first, then the unit wrapped/sharded) or around it (the
sharded unit wrapped by a checkpoint wrapper). FSDP1 uses ``checkpoint_wrapper``
both ways; FSDP2 uses the composable ``checkpoint`` inside and
``checkpoint_wrapper`` around. A forward hook on a layer of every block must
fire twice per step (forward plus recomputation in backward), proving the
checkpointing is active, and three SGD steps on rank-distinct data must match a
model trained without FSDP or checkpointing on all ranks' data.
"""

from absl.testing import parameterized
from torch.distributed._composable import checkpoint
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from testing import multirank
from testing.fsdp import models
from testing.fsdp import params
from testing.fsdp import parity
from testing.fsdp import training
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")
UNITS = ("layers.0", "layers.1", "layers.2")
STEPS = 3


def _checkpointed_model(api, placement, device):
    """Builds, checkpoints and shards the model; returns (model, per-block call counts)."""
    model = SPEC.build(seed=0)
    calls = [0] * len(model.layers)
    # fc1, not fc2: recomputation stops early once the saved tensors backward needs exist.
    for i, block in enumerate(model.layers):
        block.fc1.register_forward_hook(lambda *args, i=i: calls.__setitem__(i, calls[i] + 1))
    if placement == "inside":
        for i in range(len(model.layers)):
            if api == "fsdp1":
                model.layers[i] = checkpoint_wrapper(model.layers[i])
            else:
                checkpoint(model.layers[i])
    model = wrapping.wrap(model, api, UNITS, device=device)
    if placement == "around":
        inner = model.module if api == "fsdp1" else model
        for i in range(len(inner.layers)):
            inner.layers[i] = checkpoint_wrapper(inner.layers[i])
    return model, calls


class ActivationCheckpointingTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        (f"{placement}_units_{api}", api, placement)
        for api in ("fsdp1", "fsdp2")
        for placement in ("inside", "around")
    )
    def test_checkpointed_blocks_match_reference(self, api, placement):
        model, calls = _checkpointed_model(api, placement, self.device)
        losses = training.train(model, SPEC, steps=STEPS)
        ref, ref_losses = training.reference_train(SPEC, steps=STEPS)
        actual = params.full_params(model)
        self.assertEqual(
            calls,
            [2 * STEPS] * len(calls),
            "forward calls per block (forward + recomputation per step)",
        )
        context = f"api={api} checkpoint {placement} units"
        parity.assert_params_close(actual, params.full_params(ref), context=context)
        parity.assert_tensors_close(losses, ref_losses, name="loss", context=context)


if __name__ == "__main__":
    multirank.main()
