"""Resharding after forward frees the unsharded parameters; peak memory stays bounded.

The model is a stack of N equal units (Linear + Tanh), each its own FSDP unit;
the root holds no parameters. Let U be the bytes of one unit's unsharded
(padded) parameters, so the full model is N * U.

* With resharding after forward (FSDP1 FULL_SHARD, FSDP2
  ``reshard_after_forward=True``), between forward and backward every unit's
  unsharded parameter storage is freed (size 0; FSDP2 registers the sharded
  DTensors again), and it is freed again after backward.
* Without it (FSDP1 SHARD_GRAD_OP, FSDP2 ``reshard_after_forward=False``), the
  unsharded storage of every unit is still allocated after forward, so the
  checks above are not vacuous.
* The live unsharded parameter bytes, sampled inside every unit's forward and
  backward, never exceed 3 * U (the running unit, one prefetched, one being
  freed) with resharding, while without it they reach (N - 1) * U. The CUDA
  allocator's view of the same is in memory_cuda_test.py.

Unsharded storage is read from FSDP's internals (FSDP1 ``FlatParameter.
_full_param_padded``, FSDP2 ``FSDPParam._unsharded_param``); if a torch
release renames them the test fails saying so.
"""

import torch
from absl.testing import parameterized
from torch import nn

from testing import multirank
from testing.fsdp import compat, wrapping

N_UNITS = 8
DIM = 256  # (DIM * DIM + DIM) divides by 2 and 4: no padding at those world sizes
UNITS = tuple(f"layers.{i}" for i in range(N_UNITS))


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


def unsharded_bytes(model, api):
    """{unit name: bytes of its live unsharded parameter storage} (FSDP internals)."""
    out = {}
    try:
        if api == "fsdp1":
            for name, module in model.named_modules():
                if isinstance(module, compat.FSDP) and module._handle is not None:
                    flat = module._handle.flat_param
                    out[name] = flat._full_param_padded.untyped_storage().nbytes()
        else:
            for name, module in model.named_modules():
                if not isinstance(module, compat.FSDPModule):
                    continue
                group = module._get_fsdp_state()._fsdp_param_group
                if group is None:
                    continue
                out[name] = sum(p._unsharded_param.untyped_storage().nbytes()
                                for p in group.fsdp_params if hasattr(p, "_unsharded_param"))
    except AttributeError as e:
        raise AssertionError(f"this torch's FSDP internals changed; cannot find the "
                             f"unsharded parameter storage: {e}") from e
    return out


class MemoryTest(multirank.MultiRankTestCase, parameterized.TestCase):

    def _wrap(self, api, reshard):
        if api == "fsdp1":
            options = {"sharding_strategy": "FULL_SHARD" if reshard else "SHARD_GRAD_OP"}
        else:
            options = {"reshard_after_forward": reshard}
        return wrapping.wrap(_build(), api, UNITS, device=self.device, **options)

    def _inputs(self):
        gen = torch.Generator().manual_seed(1000 + self.rank)  # rank-distinct
        return torch.randn(2, DIM, generator=gen).to(self.device)

    def _unit_bytes(self):
        """U: bytes of one unit's unsharded, padded parameters."""
        numel = DIM * DIM + DIM
        padded = -(-numel // self.world_size) * self.world_size
        return padded * 4

    def _inner_units(self, model):
        """The Linear of every unit (its hooks run while the unit is unsharded)."""
        return [m for m in model.modules()
                if isinstance(m, nn.Linear) and not isinstance(m, compat.FSDP)]

    def _step_with_samples(self, model, api):
        """Warm-up step, then one step sampling live unsharded bytes in every unit.

        Returns (after_forward, after_backward, peak sampled total).
        """
        model(self._inputs()).sum().backward()  # lazy init and first all-gathers
        model.zero_grad(set_to_none=True)
        samples = []

        def sample(*_):
            samples.append(sum(unsharded_bytes(model, api).values()))

        handles = []
        for linear in self._inner_units(model):
            handles.append(linear.register_forward_hook(sample))
            handles.append(linear.register_full_backward_pre_hook(sample))
        try:
            out = model(self._inputs())
            after_forward = unsharded_bytes(model, api)
            out.sum().backward()
            after_backward = unsharded_bytes(model, api)
        finally:
            for handle in handles:
                handle.remove()
        self.assertLen(samples, 2 * N_UNITS, "hooks did not run in every unit")
        return after_forward, after_backward, max(samples)

    @parameterized.named_parameters(("full_shard_fsdp1", "fsdp1"), ("fsdp2", "fsdp2"))
    def test_reshard_after_forward_frees_unsharded_params(self, api):
        model = self._wrap(api, reshard=True)
        after_forward, after_backward, peak = self._step_with_samples(model, api)
        self.assertLen(after_forward, N_UNITS, f"units found: {sorted(after_forward)}")
        self.assertEqual(after_forward, dict.fromkeys(after_forward, 0),
                         "unsharded parameter bytes between forward and backward")
        self.assertEqual(after_backward, dict.fromkeys(after_backward, 0),
                         "unsharded parameter bytes after backward")
        if api == "fsdp2":
            for name, p in model.named_parameters():
                self.assertTrue(compat.is_dtensor(p), f"{name} not resharded after forward")
        unit = self._unit_bytes()
        self.assertLessEqual(peak, 3 * unit,
                             f"peak live unsharded bytes {peak} > 3 units ({unit} B each)")

    @parameterized.named_parameters(("shard_grad_op_fsdp1", "fsdp1"), ("fsdp2", "fsdp2"))
    def test_without_reshard_unsharded_params_stay_allocated(self, api):
        model = self._wrap(api, reshard=False)
        after_forward, _, peak = self._step_with_samples(model, api)
        unit = self._unit_bytes()
        self.assertLen(after_forward, N_UNITS, f"units found: {sorted(after_forward)}")
        self.assertEqual(after_forward, dict.fromkeys(after_forward, unit),
                         "unsharded parameter bytes between forward and backward")
        self.assertGreaterEqual(peak, (N_UNITS - 1) * unit)


if __name__ == "__main__":
    multirank.main()
