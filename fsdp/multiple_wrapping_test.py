"""Re-wrapping a model that already holds nested FSDP keeps its function.

An inner model is sharded unit by unit, wrapped again by an outer FSDP root and
trained for three SGD steps on rank-distinct data. Then the same inner model is
wrapped by a fresh root. The fresh root's outputs must equal the original
root's, and both must equal a reference trained without FSDP.

Meaningful combinations: FSDP1 inside FSDP1, where an FSDP instance that
already trained is wrapped by a new FullyShardedDataParallel root. FSDP2 lets a
module that already holds fully_shard units be fully_shard-ed again as the
root of a new holder, and that trains like the reference; but once the inner
units ran, FSDP2 has settled which module is their root and refuses a new one
with a RuntimeError at the first forward (checked, so a release that silently
accepts it and computes garbage is caught). Mixing FSDP1 and FSDP2 in one model
is not supported by torch and is not tested.
"""

import torch
from torch import nn

from testing import multirank
from testing.fsdp import api_cases
from testing.fsdp import data
from testing.fsdp import models
from testing.fsdp import parity
from testing.fsdp import training
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")


class Holder(nn.Module):
    """An outer root with no parameters of its own around an inner model."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def _outer_root(inner: nn.Module, api: str, device) -> nn.Module:
    """Wraps an already sharded ``inner`` model in a new FSDP root."""
    if api == "fsdp1":
        return wrapping.wrap(inner, api, device=device)
    return wrapping.wrap(Holder(inner), api, device=device)


class MultipleWrappingTest(multirank.MultiRankTestCase):
    def _train_wrapped_inner(self, api):
        """Returns (inner, its trained outer root, reference, eval inputs)."""
        inner = wrapping.wrap_spec(SPEC, api)
        original = _outer_root(inner, api, self.device)
        training.train(original, SPEC, steps=3, seed=0)
        reference, _ = training.reference_train(SPEC, steps=3, seed=0)
        inputs, _ = data.rank_batch(SPEC, seed=0, rank=self.rank, step=api_cases.EVAL_STEP)
        return inner, original, reference, inputs

    def test_rewrapped_inner_model_matches_original_and_reference_fsdp1(self):
        inner, original, reference, inputs = self._train_wrapped_inner("fsdp1")
        rewrapped = _outer_root(inner, "fsdp1", self.device)
        with torch.no_grad():
            original_out = original(inputs)
            rewrapped_out = rewrapped(inputs)
            reference_out = reference(inputs)
        parity.assert_tensors_close(
            rewrapped_out, original_out, name="re-wrapped vs original output"
        )
        parity.assert_tensors_close(
            original_out, reference_out, name="original vs reference output"
        )

    def test_wrapped_inner_model_matches_reference_fsdp2(self):
        _, original, reference, inputs = self._train_wrapped_inner("fsdp2")
        with torch.no_grad():
            parity.assert_tensors_close(
                original(inputs), reference(inputs), name="original vs reference output"
            )

    def test_new_root_for_trained_inner_model_is_refused_fsdp2(self):
        inner, _, _, inputs = self._train_wrapped_inner("fsdp2")
        rewrapped = _outer_root(inner, "fsdp2", self.device)
        with self.assertRaises(RuntimeError):
            with torch.no_grad():
                rewrapped(inputs)


if __name__ == "__main__":
    multirank.main()
