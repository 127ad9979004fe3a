"""Gradient-norm clipping on sharded gradients equals clipping unsharded ones.

After one backward on rank-distinct data, the total gradient norm computed over
the shards (FSDP1 ``FullyShardedDataParallel.clip_grad_norm_`` on the root,
FSDP2 ``torch.nn.utils.clip_grad_norm_`` on the DTensor parameters) must equal
the norm of the unsharded gradients of a model trained without FSDP on all
ranks' data, for the 2-norm and the max-norm; with a threshold below that norm,
the clipped gradients must equal the reference's clipped gradients.
"""

import math

import torch
from absl.testing import parameterized

from testing import multirank
from testing.fsdp import compat
from testing.fsdp import data
from testing.fsdp import models
from testing.fsdp import params
from testing.fsdp import parity
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")
MAX_NORM = 0.05


def _clip(model, api, norm_type):
    """Clips ``model``'s gradients the API's way; returns the total norm as a plain tensor."""
    if api == "fsdp1":
        total = model.clip_grad_norm_(MAX_NORM, norm_type)
    else:
        total = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM, norm_type)
    if compat.is_dtensor(total):
        total = total.full_tensor()
    return total.detach().to("cpu", torch.float64)


_CASES = [
    (f"{name}_{api}", api, norm_type)
    for api in ("fsdp1", "fsdp2")
    for name, norm_type in (("l2", 2.0), ("inf", math.inf))
]


class ClipGradNormTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(*_CASES)
    def test_clip_grad_norm_matches_unsharded(self, api, norm_type):
        options = {"use_orig_params": True} if api == "fsdp1" else {}
        model = wrapping.wrap_spec(SPEC, api, device=self.device, **options)
        inputs, targets = data.rank_batch(SPEC, seed=0, rank=self.rank, step=0, device=self.device)
        SPEC.loss_fn(model(inputs), targets).backward()
        total = _clip(model, api, norm_type)
        grads = params.full_grads(model)

        ref = SPEC.build(seed=0).to(self.device)
        inputs, targets = data.global_batch(
            SPEC, seed=0, world_size=self.world_size, step=0, device=self.device
        )
        SPEC.loss_fn(ref(inputs), targets).backward()
        ref_total = torch.nn.utils.clip_grad_norm_(ref.parameters(), MAX_NORM, norm_type)
        ref_total = ref_total.detach().to("cpu", torch.float64)

        self.assertGreater(float(ref_total), 2 * MAX_NORM, "the reference must be clipped")
        parity.assert_tensors_close(total, ref_total, name=f"total grad norm ({norm_type})")
        parity.assert_params_close(
            grads,
            params.full_grads(ref),
            what="clipped gradient",
            context=f"api={api} norm_type={norm_type}",
        )


if __name__ == "__main__":
    multirank.main()
