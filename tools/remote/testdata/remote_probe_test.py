"""A small sharded FSDP test that tools/remote/remote_integration_test.sh sends to workers.

Four methods over two shards (absltest splits them round-robin), each a real multi-rank
check, so a remote run that loses shards, environment or outputs shows up here.
"""

import os

import torch
import torch.distributed as dist
from torch import nn

from testing import multirank
from testing.fsdp import compat


class RemoteProbeTest(multirank.MultiRankTestCase):
    def test_all_reduce(self):
        t = torch.full((4,), float(self.rank + 1), device=self.device)
        dist.all_reduce(t)
        expected = float(sum(range(1, self.world_size + 1)))
        torch.testing.assert_close(t.cpu(), torch.full((4,), expected))

    def test_fsdp2_step_matches_unsharded(self):
        torch.manual_seed(0)
        reference = nn.Linear(8, 4)
        model = nn.Linear(8, 4).to(self.device)
        model.load_state_dict(reference.state_dict())
        compat.fully_shard(model)
        inputs = torch.randn(self.world_size, 8)
        # Each rank gets its row; the reference sees the whole batch.
        model(inputs[self.rank : self.rank + 1].to(self.device)).sum().backward()
        reference(inputs).sum().backward()
        full_grad = model.weight.grad.full_tensor().cpu() * self.world_size
        torch.testing.assert_close(full_grad, reference.weight.grad)

    def test_sees_bazel_shard_environment(self):
        self.assertIn("TEST_TOTAL_SHARDS", os.environ)
        self.assertEqual(os.environ["TEST_TOTAL_SHARDS"], "2")

    def test_broadcast(self):
        t = torch.full((3,), float(self.rank), device=self.device)
        dist.broadcast(t, src=0)
        torch.testing.assert_close(t.cpu(), torch.zeros(3))


if __name__ == "__main__":
    multirank.main()
