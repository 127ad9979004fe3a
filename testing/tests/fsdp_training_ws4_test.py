"""Multi-rank self-test of testing/fsdp with uneven and empty shards.

``uneven_mlp`` has parameters of 7, 11 and 3 rows and a 1-element parameter,
so at world size 4 (what its BUILD target passes, ``--world_size=4``) some
ranks hold padded or empty shards. Training it under FSDP1 and FSDP2 must
match an unwrapped reference, parameters and buffers; under FSDP2 the ranks
holding no rows of a parameter must be those ``torch.chunk`` leaves without
(``at_world_size.chunk_rows``), and at world size 4 there must be some. Correct
at any world size; 4 is where the empty shards it exists for appear.
"""

import torch.distributed as dist
from absl.testing import parameterized

from testing import multirank
from testing.fsdp import at_world_size, models, training, wrapping

SPEC = models.get("uneven_mlp")


class UnevenWorldSize4Test(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.parameters(*wrapping.APIS)
    def test_uneven_world_size_4(self, api):
        result = training.check_against_reference(SPEC, api, buffers=True)
        if api != "fsdp2":
            return
        shards = {n: p.to_local().shape[0] for n, p in result["model"].named_parameters()}
        per_rank = [None] * self.world_size
        dist.all_gather_object(per_rank, shards)
        expected = [
            {
                n: at_world_size.chunk_rows(p.shape[0], rank, self.world_size)
                for n, p in result["model"].named_parameters()
            }
            for rank in range(self.world_size)
        ]
        self.assertEqual(per_rank, expected, "FSDP2 rows per rank and parameter")
        if self.world_size == 4:
            self.assertIn(0, expected[-1].values(), "no empty shard at world size 4")


if __name__ == "__main__":
    multirank.main()
