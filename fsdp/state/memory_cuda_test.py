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

from testing import multirank
from testing.fsdp import unit_stack

N_UNITS = unit_stack.N_UNITS
# Activations are batch 2 x DIM floats per op, plus the allocator's 512-byte
# rounding per allocation: small next to one unit (257 KiB).
ACTIVATION_SLACK = 256 * 1024


class MemoryCudaTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("full_shard_fsdp1", "fsdp1", True),
        ("shard_grad_op_fsdp1", "fsdp1", False),
        ("reshard_fsdp2", "fsdp2", True),
        ("no_reshard_fsdp2", "fsdp2", False),
    )
    def test_forward_peak_allocated_memory_bounded(self, api, reshard):
        self.assertEqual(self.device.type, "cuda", "needs the CUDA caching allocator")
        model = unit_stack.wrap(api, reshard, device=self.device)
        inputs = unit_stack.inputs(self.rank, self.device)  # rank-distinct
        model(inputs).sum().backward()  # warm-up: lazy init, first all-gathers
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        with torch.no_grad():
            model(inputs)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - base
        unit = unit_stack.unit_bytes(self.world_size)
        if reshard:
            self.assertLessEqual(
                peak, 4 * unit + ACTIVATION_SLACK, f"forward peak {peak} B; one unit is {unit} B"
            )
        else:
            self.assertGreaterEqual(
                peak, (N_UNITS - 1) * unit, f"forward peak {peak} B; one unit is {unit} B"
            )


if __name__ == "__main__":
    multirank.main()
