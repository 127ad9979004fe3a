"""The CUDA allocator's peak during forward shows resharding: bounded by a few units.

The same model as memory_test.py: N equal units (Linear + Tanh), each its own
FSDP unit, U bytes of unsharded (padded) parameters per unit. After a warm-up
step, a no_grad forward's increase of ``torch.cuda.max_memory_allocated`` over
the memory allocated before it must stay within 4 * U plus activation slack
with resharding after forward (FSDP1 FULL_SHARD, FSDP2
``reshard_after_forward=True``), and reach at least (N - 1) * U without it
(FSDP1 SHARD_GRAD_OP, FSDP2 ``reshard_after_forward=False``), which shows the
bound is not vacuous. CUDA only: CPU tensors have no allocator statistics
(memory_test.py covers CPU by accounting storages).
"""

import torch
from absl.testing import parameterized
from torch import nn

from testing import multirank
from testing.fsdp import wrapping

N_UNITS = 8
DIM = 256  # (DIM * DIM + DIM) divides by 2 and 4: no padding at those world sizes
UNITS = tuple(f"layers.{i}" for i in range(N_UNITS))
# Activations are batch 2 x DIM floats per op, plus the allocator's 512-byte
# rounding per allocation: small next to one unit (257 KiB).
ACTIVATION_SLACK = 256 * 1024


class _Stack(nn.Module):
    """N_UNITS units of Linear(DIM, DIM) + Tanh; no parameters outside the units."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Sequential(nn.Linear(DIM, DIM), nn.Tanh())
                                      for _ in range(N_UNITS)])

    def forward(self, x):
        return self.layers(x)


def _build():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _Stack()


class MemoryCudaTest(multirank.MultiRankTestCase, parameterized.TestCase):

    def _wrap(self, api, reshard):
        if api == "fsdp1":
            options = {"sharding_strategy": "FULL_SHARD" if reshard else "SHARD_GRAD_OP"}
        else:
            options = {"reshard_after_forward": reshard}
        return wrapping.wrap(_build(), api, UNITS, device=self.device, **options)

    def _unit_bytes(self):
        """U: bytes of one unit's unsharded, padded parameters."""
        numel = DIM * DIM + DIM
        return -(-numel // self.world_size) * self.world_size * 4

    @parameterized.named_parameters(
        ("full_shard_fsdp1", "fsdp1", True), ("shard_grad_op_fsdp1", "fsdp1", False),
        ("reshard_fsdp2", "fsdp2", True), ("no_reshard_fsdp2", "fsdp2", False))
    def test_forward_peak_allocated_memory_bounded(self, api, reshard):
        self.assertEqual(self.device.type, "cuda", "needs the CUDA caching allocator")
        model = self._wrap(api, reshard)
        gen = torch.Generator().manual_seed(1000 + self.rank)  # rank-distinct
        inputs = torch.randn(2, DIM, generator=gen).to(self.device)
        model(inputs).sum().backward()  # warm-up: lazy init, first all-gathers
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        with torch.no_grad():
            model(inputs)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - base
        unit = self._unit_bytes()
        if reshard:
            self.assertLessEqual(peak, 4 * unit + ACTIVATION_SLACK,
                                 f"forward peak {peak} B; one unit is {unit} B")
        else:
            self.assertGreaterEqual(peak, (N_UNITS - 1) * unit,
                                    f"forward peak {peak} B; one unit is {unit} B")


if __name__ == "__main__":
    multirank.main()
