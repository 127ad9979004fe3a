"""The collectives FSDP is built on give the right results on this device.

FSDP shards with all-gather and reduces gradients with reduce-scatter (and
all-reduce for NO_SHARD); if one of them is wrong on a backend, every FSDP
test fails for a reason this file names directly. Every rank contributes
different values, so a collective that does nothing cannot pass.
"""

import torch
import torch.distributed as dist

from testing import multirank


class CollectivesTest(multirank.MultiRankTestCase):
    def _rank_values(self, n: int) -> torch.Tensor:
        """n values that differ per rank: rank r holds r*100 + [0..n)."""
        return torch.arange(n, dtype=torch.float32, device=self.device) + 100 * self.rank

    def test_all_reduce_sums_rank_values(self):
        t = self._rank_values(4)
        dist.all_reduce(t)
        ranks = sum(range(self.world_size))
        expected = torch.arange(4.0) * self.world_size + 100 * ranks
        torch.testing.assert_close(t.cpu(), expected)

    def test_all_gather_into_tensor_orders_by_rank(self):
        out = torch.empty(3 * self.world_size, device=self.device)
        dist.all_gather_into_tensor(out, self._rank_values(3))
        expected = torch.cat([torch.arange(3.0) + 100 * r for r in range(self.world_size)])
        torch.testing.assert_close(out.cpu(), expected)

    def test_reduce_scatter_gives_each_rank_its_summed_chunk(self):
        chunk = 2
        t = self._rank_values(chunk * self.world_size)
        out = torch.empty(chunk, device=self.device)
        dist.reduce_scatter_tensor(out, t)
        ranks = sum(range(self.world_size))
        full = torch.arange(float(chunk * self.world_size)) * self.world_size + 100 * ranks
        torch.testing.assert_close(out.cpu(), full[self.rank * chunk : (self.rank + 1) * chunk])

    def test_broadcast_from_last_rank(self):
        t = self._rank_values(5)
        dist.broadcast(t, src=self.world_size - 1)
        torch.testing.assert_close(t.cpu(), torch.arange(5.0) + 100 * (self.world_size - 1))


if __name__ == "__main__":
    multirank.main()
