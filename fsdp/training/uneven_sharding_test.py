"""Parameters that do not divide evenly across ranks train like unsharded training.

The ``uneven_mlp`` model has dimensions 5, 7, 11 and 3 and a one-element
parameter, so no parameter splits evenly over 2 or 4 ranks and at world size 4
some ranks hold an empty shard of a parameter. Run at world sizes 2 and 4 (see
BUILD.bazel), nested and flat, three SGD steps on rank-distinct data must match
a model trained without FSDP on all ranks' data, and FSDP2's local shards must
tile each parameter exactly (sizes summing to the full dim 0).
"""

import torch.distributed as dist
from absl.testing import parameterized

from testing import multirank
from testing.fsdp import compat
from testing.fsdp import models
from testing.fsdp import training

SPEC = models.get("uneven_mlp")


class UnevenShardingTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        (f"{wrapping_name}_{api}", api, units)
        for api in ("fsdp1", "fsdp2")
        for wrapping_name, units in (("nested", None), ("flat", ()))
    )
    def test_uneven_params_match_reference(self, api, units):
        result = training.check_against_reference(SPEC, api, units=units, steps=3)
        if api == "fsdp2":
            rows = {n: p.to_local().shape[0] for n, p in result["model"].named_parameters()}
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, rows)
            for name, p in result["model"].named_parameters():
                self.assertTrue(compat.is_dtensor(p), name)
                per_rank = [g[name] for g in gathered]
                self.assertEqual(sum(per_rank), p.shape[0], f"{name}: local rows {per_rank}")


if __name__ == "__main__":
    multirank.main()
