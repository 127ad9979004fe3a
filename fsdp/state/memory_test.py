"""Resharding after forward frees the unsharded parameters; peak memory stays bounded.

The model is a stack of N equal units (Linear + Tanh), each its own FSDP unit;
the root holds no parameters. Let U be the bytes of one unit's unsharded
(padded) parameters, so the full model is N * U (``equal_unit_stack.unit_bytes``:
FSDP1 pads each flat parameter, FSDP2 each parameter's rows, to a multiple of
the world size).

* With resharding after forward (FSDP1 FULL_SHARD, FSDP2
  ``reshard_after_forward=True``), between forward and backward every unit's
  unsharded parameter storage is freed (size 0; FSDP2 registers the sharded
  DTensors again), and it is freed again after backward.
* Without it (FSDP1 SHARD_GRAD_OP, FSDP2 ``reshard_after_forward=False``), the
  unsharded storage of every unit is still allocated after forward, so the
  checks above are not vacuous.
* The live unsharded parameter bytes, sampled inside every unit's forward and
  backward, never exceed 3 * U (the running unit, one prefetched, one being
  freed) with resharding, while without it they reach (N - 1) * U.
* The CUDA allocator shows the same (``test_forward_peak_allocated_memory_bounded``,
  CUDA only: CPU tensors have no allocator statistics, so the cases are disabled
  elsewhere in BUILD): after a warm-up step, a no_grad forward's increase of
  ``torch.cuda.max_memory_allocated`` over the memory allocated before it stays
  within 4 * U plus activation slack with resharding, and reaches at least
  (N - 1) * U without it.

At world size 1 FSDP1 runs NO_SHARD whatever the strategy asked
(``at_world_size.fsdp1_shards``): each unit's flat parameter is its whole
parameters for good, so it must hold U bytes at every sample, the whole model
(N * U) stays live, nothing is freed, and a forward allocates no parameter
copies (its CUDA peak stays within the activation slack). FSDP2 all-gathers
into a separate buffer even on one rank, so its expectations hold at every size.

Unsharded storage is read from FSDP's internals (FSDP1 ``FlatParameter.
_full_param_padded``, FSDP2 ``FSDPParam._unsharded_param``); if a torch
release renames them the test fails saying so.
"""

import torch
from absl.testing import parameterized
from torch import nn

from testing import multirank
from testing.fsdp import at_world_size, compat, equal_unit_stack

N_UNITS = equal_unit_stack.N_UNITS
# Activations are batch 2 x DIM floats per op, plus the allocator's 512-byte
# rounding per allocation: small next to one unit (257 KiB).
ACTIVATION_SLACK = 256 * 1024


def _fsdp1_unsharded_bytes(module) -> int:
    """Bytes of an FSDP1 unit's unsharded storage: its padded buffer, or under
    NO_SHARD the flat parameter itself (it never has another form)."""
    flat = module._handle.flat_param
    if module.sharding_strategy != compat.ShardingStrategy.NO_SHARD:
        return flat._full_param_padded.untyped_storage().nbytes()
    return flat.untyped_storage().nbytes()


def unsharded_bytes(model, api):
    """{unit name: bytes of its live unsharded parameter storage} (FSDP internals)."""
    out = {}
    try:
        if api == "fsdp1":
            for name, module in model.named_modules():
                if isinstance(module, compat.FSDP) and module._handle is not None:
                    out[name] = _fsdp1_unsharded_bytes(module)
        else:
            for name, module in model.named_modules():
                if not isinstance(module, compat.FSDPModule):
                    continue
                group = module._get_fsdp_state()._fsdp_param_group
                if group is None:
                    continue
                out[name] = sum(
                    p._unsharded_param.untyped_storage().nbytes()
                    for p in group.fsdp_params
                    if hasattr(p, "_unsharded_param")
                )
    except AttributeError as e:
        raise AssertionError(
            f"this torch's FSDP internals changed; cannot find the unsharded parameter storage: {e}"
        ) from e
    return out


class MemoryTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _inner_units(self, model):
        """The Linear of every unit (its hooks run while the unit is unsharded)."""
        return [
            m
            for m in model.modules()
            if isinstance(m, nn.Linear) and not isinstance(m, compat.FSDP)
        ]

    def _step_with_samples(self, model, api):
        """Warm-up step, then one step sampling live unsharded bytes in every unit.

        Returns (after_forward, after_backward, peak sampled total).
        """
        inputs = equal_unit_stack.inputs(self.rank, self.device)
        model(inputs).sum().backward()  # lazy init and first all-gathers
        model.zero_grad(set_to_none=True)
        samples = []

        def sample(*_):
            samples.append(sum(unsharded_bytes(model, api).values()))

        handles = []
        for linear in self._inner_units(model):
            handles.append(linear.register_forward_hook(sample))
            handles.append(linear.register_full_backward_pre_hook(sample))
        try:
            out = model(inputs)
            after_forward = unsharded_bytes(model, api)
            out.sum().backward()
            after_backward = unsharded_bytes(model, api)
        finally:
            for handle in handles:
                handle.remove()
        self.assertLen(samples, 2 * N_UNITS, "hooks did not run in every unit")
        return after_forward, after_backward, max(samples)

    def _sampled_step(self, api, reshard):
        """:meth:`_step_with_samples` of a fresh stack; fails unless every unit was sampled.

        Returns (model, after_forward, after_backward, peak, one unit's full bytes).
        """
        model = equal_unit_stack.wrap(api, reshard=reshard)
        after_forward, after_backward, peak = self._step_with_samples(model, api)
        self.assertLen(after_forward, N_UNITS, f"units found: {sorted(after_forward)}")
        unit = equal_unit_stack.unit_bytes(self.world_size, api)
        return model, after_forward, after_backward, peak, unit

    def _assert_no_shard(self, model):
        """FSDP1 on one rank: every unit runs NO_SHARD, whatever was asked."""
        strategies = {
            name: m.sharding_strategy
            for name, m in model.named_modules()
            if isinstance(m, compat.FSDP)
        }
        self.assertEqual(
            set(strategies.values()),
            {compat.ShardingStrategy.NO_SHARD},
            f"FSDP1 strategies at world size {self.world_size}: {strategies}",
        )

    def _assert_every_unit(self, unsharded_bytes, expected, when):
        """Each unit's live unsharded parameter bytes ``when`` are ``expected``."""
        self.assertEqual(
            unsharded_bytes,
            dict.fromkeys(unsharded_bytes, expected),
            f"unsharded parameter bytes {when}",
        )

    @parameterized.named_parameters(("full_shard_fsdp1", "fsdp1"), ("fsdp2", "fsdp2"))
    def test_reshard_after_forward_frees_unsharded_params(self, api):
        model, after_forward, after_backward, peak, unit = self._sampled_step(api, reshard=True)
        if not at_world_size.shards(api, self.world_size):
            self._assert_no_shard(model)
            whole = dict.fromkeys(after_forward, unit)
            self.assertEqual(after_forward, whole, "NO_SHARD parameter bytes after forward")
            self.assertEqual(after_backward, whole, "NO_SHARD parameter bytes after backward")
            self.assertEqual(peak, N_UNITS * unit, "NO_SHARD: the whole model stays live")
            return
        self._assert_every_unit(after_forward, 0, "between forward and backward")
        self._assert_every_unit(after_backward, 0, "after backward")
        if api == "fsdp2":
            for name, p in model.named_parameters():
                self.assertTrue(compat.is_dtensor(p), f"{name} not resharded after forward")
        self.assertLessEqual(
            peak, 3 * unit, f"peak live unsharded bytes {peak} > 3 units ({unit} B each)"
        )

    @parameterized.named_parameters(("shard_grad_op_fsdp1", "fsdp1"), ("fsdp2", "fsdp2"))
    def test_without_reshard_unsharded_params_stay_allocated(self, api):
        _, after_forward, _, peak, unit = self._sampled_step(api, reshard=False)
        self._assert_every_unit(after_forward, unit, "between forward and backward")
        self.assertGreaterEqual(peak, (N_UNITS - 1) * unit)

    @parameterized.named_parameters(
        ("full_shard_fsdp1", "fsdp1", True),
        ("shard_grad_op_fsdp1", "fsdp1", False),
        ("reshard_fsdp2", "fsdp2", True),
        ("no_reshard_fsdp2", "fsdp2", False),
    )
    def test_forward_peak_allocated_memory_bounded(self, api, reshard):
        self.assertEqual(self.device.type, "cuda", "needs the CUDA caching allocator")
        model = equal_unit_stack.wrap(api, reshard)
        inputs = equal_unit_stack.inputs(self.rank, self.device)  # rank-distinct
        model(inputs).sum().backward()  # warm-up: lazy init, first all-gathers
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        with torch.no_grad():
            model(inputs)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - base
        unit = equal_unit_stack.unit_bytes(self.world_size, api)
        message = f"forward peak {peak} B over {base} B allocated; one unit is {unit} B"
        if not at_world_size.shards(api, self.world_size):
            self._assert_no_shard(model)
            self.assertGreaterEqual(base, N_UNITS * unit, f"NO_SHARD keeps the model: {message}")
            self.assertLessEqual(peak, ACTIVATION_SLACK, f"NO_SHARD gathers nothing: {message}")
        elif reshard:
            self.assertLessEqual(peak, 4 * unit + ACTIVATION_SLACK, message)
        else:
            self.assertGreaterEqual(peak, (N_UNITS - 1) * unit, message)


if __name__ == "__main__":
    multirank.main()
