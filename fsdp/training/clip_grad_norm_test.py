"""Gradient-norm clipping on sharded gradients equals clipping unsharded ones.

After one backward on rank-distinct data, the total gradient norm computed over
the shards (FSDP1 ``FullyShardedDataParallel.clip_grad_norm_`` on the root,
FSDP2 ``torch.nn.utils.clip_grad_norm_`` on the DTensor parameters) must equal
the norm of the unsharded gradients of a model trained without FSDP on all
ranks' data, for the 2-norm and the max-norm; with a threshold below that norm,
the clipped gradients must equal the reference's clipped gradients.

The threshold is a quarter of the reference's norm, so every world size clips:
the global batch, hence the norm, changes with the world size (the max-norm is
0.095 at world size 4, against 0.16 at 2).

Found with torch 2.13 (CPU), and seen on 2.10, 2.12 and 2.14.1 too: FSDP2 with
the max-norm fails on a rank that holds an empty shard of a parameter
(``nested_mlp``'s ``out`` has 4 rows: world size 3 and 5 or more):
``torch.nn.utils.clip_grad_norm_`` takes the infinity norm of every local
gradient (``torch._foreach_norm``; ``linalg.vector_norm`` on 2.10), which
refuses an empty tensor; the other ranks then wait in the norm's all-reduce.
Listed in ``known_failures`` where a rank holds an empty shard.
"""

import math

import torch
from absl.testing import parameterized

from testing import known_failures, multirank
from testing.fsdp import at_world_size
from testing.fsdp import compat
from testing.fsdp import data
from testing.fsdp import models
from testing.fsdp import params
from testing.fsdp import parity
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")
ROWS = {p.shape[0] for p in SPEC.build(0).parameters()}  # 4 (out) to 32


def _clip(model, api, max_norm, norm_type):
    """Clips ``model``'s gradients the API's way; returns the total norm as a plain tensor."""
    if api == "fsdp1":
        total = model.clip_grad_norm_(max_norm, norm_type)
    else:
        total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, norm_type)
    if compat.is_dtensor(total):
        total = total.full_tensor()
    return total.detach().to("cpu", torch.float64)


_CASES = [
    (f"{name}_{api}", api, norm_type)
    for api in ("fsdp1", "fsdp2")
    for name, norm_type in (("l2", 2.0), ("inf", math.inf))
]


class ClipGradNormTest(multirank.MultiRankTestCase, parameterized.TestCase):
    known_failures = {
        "test_clip_grad_norm_matches_unsharded_inf_fsdp2": known_failures.TorchBug(
            "clip_grad_norm_ max-norm of an empty DTensor shard",
            "torch.nn.utils.clip_grad_norm_(norm_type=inf) takes the infinity norm of a "
            "rank's empty gradient shard, which raises ('cannot compute the inf norm on an "
            "empty tensor': torch._foreach_norm, linalg.vector_norm on 2.10)",
            affected=">=2.10",
            condition=known_failures.Condition(
                "a rank holding no rows of a parameter (out has 4)",
                lambda case: any(at_world_size.has_empty_shard(r, case.world_size) for r in ROWS),
            ),
        ),
    }

    @parameterized.named_parameters(*_CASES)
    def test_clip_grad_norm_matches_unsharded(self, api, norm_type):
        ref = SPEC.build(seed=0).to(self.device)
        inputs, targets = data.global_batch(SPEC, seed=0, world_size=self.world_size, step=0)
        SPEC.loss_fn(ref(inputs), targets).backward()
        flat = torch.cat([p.grad.flatten() for p in ref.parameters()])
        # A quarter of the norm: every world size clips, each gradient to a quarter.
        max_norm = float(torch.linalg.vector_norm(flat, norm_type)) / 4
        ref_total = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm, norm_type)
        ref_total = ref_total.detach().to("cpu", torch.float64)

        options = {"use_orig_params": True} if api == "fsdp1" else {}
        model = wrapping.wrap_spec(SPEC, api, **options)
        inputs, targets = data.rank_batch(SPEC, seed=0, rank=self.rank, step=0)
        SPEC.loss_fn(model(inputs), targets).backward()
        total = _clip(model, api, max_norm, norm_type)
        grads = params.full_grads(model)

        parity.assert_tensors_close(total, ref_total, name=f"total grad norm ({norm_type})")
        parity.assert_params_close(
            grads,
            params.full_grads(ref),
            what="clipped gradient",
            context=f"api={api} norm_type={norm_type}",
        )


if __name__ == "__main__":
    multirank.main()
