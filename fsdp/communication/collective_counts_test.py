"""A training step issues exactly the collectives its FSDP configuration implies.

Model: ``distinct_size_units`` (units ``layers.0``/``layers.1``/``layers.2`` of 576, 1632
and 1200 bytes, plus the root's own 224 bytes: 4 FSDP units, 3632 bytes in all,
3408 bytes outside the root). The second step of a run (after lazy
initialization) is recorded at the dispatcher per phase (forward, backward,
optimizer) and must match, call for call, byte for byte and on the right group
size (kinds are keyed ``<kind>@<group size>``), a table derived in this file
from that structure and the world size N: every unit all-gathers once in
forward; units that reshard after forward all-gather again in backward, the
root never does (FSDP1 and FSDP2 keep the root unsharded between forward and
backward); every unit reduces its gradient once in backward, unless
accumulating; the optimizer step (elementwise SGD on local shards) issues
nothing. An extra, missing or resized collective fails with the rank, phase,
kind and expected versus observed calls and bytes. Parameters after the step
must also equal an unsharded reference, so counting never replaces correctness.

What the world size changes:

* bytes: a gather or reduce-scatter carries its unit padded for the shard group
  (``distinct_size_units.padded_bytes``): exact at 1, 2 and 4; at 3, FSDP1 3636 B and
  FSDP2 3816 B; at 8, FSDP1 3648 B and FSDP2 4256 B;
* world size 1: FSDP1 turns FULL_SHARD and SHARD_GRAD_OP into NO_SHARD (an
  all-reduce of every unit on a group of one, no gather); FSDP2 on a one-rank
  1-D mesh issues no collective at all;
* 2-D meshes with both dimensions above 1 (2x2 at 4; 2x4 and 4x2 at 8) and
  ``reshard_after_forward`` to a proper divisor of N exist only at composite N:
  elsewhere those cases are declared not applicable in BUILD.

Covers FSDP1 FULL_SHARD, SHARD_GRAD_OP, NO_SHARD and HYBRID_SHARD; FSDP2
``reshard_after_forward`` True, False and an int; gradient accumulation (FSDP1
``no_sync``, FSDP2 ``set_requires_gradient_sync(False)``); FSDP2 on the
degenerate 2-D meshes N x 1 and 1 x N and on every 2-D mesh.
"""

import contextlib

import torch
import torch.distributed as dist
from absl.testing import parameterized

from testing import multirank
from testing.fsdp import api_cases, collective_count, distinct_size_units, meshes, parity, wrapping

SPEC = distinct_size_units.SPEC
ALL_UNITS = tuple(distinct_size_units.NUMEL)  # three layers, then the root
NON_ROOT = distinct_size_units.UNITS  # units that may reshard after forward
N_UNITS = len(ALL_UNITS)  # 4
N_NON_ROOT = len(NON_ROOT)  # 3
ALL = sum(distinct_size_units.unit_bytes(u) for u in ALL_UNITS)  # unpadded: 3632

AG, RS, AR = "all_gather", "reduce_scatter", "all_reduce"
FWD, BWD = collective_count.FORWARD, collective_count.BACKWARD


def _bytes(api, shard, units=ALL_UNITS):
    """Summed bytes of ``units`` as ``api`` pads them for a shard group of ``shard``.

    All units: 3632 at 1, 2 and 4 (nothing pads); at 3, FSDP1 3636 (the root's
    flat parameter 56 -> 57 elements) and FSDP2 3816 (dim 0 of 16 -> 18 rows in
    ``layers.0``, of 4 -> 6 in the root); at 8, FSDP1 3648 (``layers.2`` 300 ->
    304 elements) and FSDP2 4256 (dim 0 of 12 -> 16 in ``layers.2``, 4 -> 8 in
    the root). Outside the root: 3408, or 3408 (FSDP1) / 3480 (FSDP2) at 3 and
    3424 / 3808 at 8.
    """
    return sum(distinct_size_units.padded_bytes(u, api, shard) for u in units)


def _key(kind, group):
    return f"{kind}@{group}"


def flat_step(api, shard, reshard):
    """One synchronized step sharded over a group of ``shard`` > 1 ranks.

    ``reshard``: FSDP1 FULL_SHARD (True) or SHARD_GRAD_OP (False); FSDP2
    ``reshard_after_forward`` on the layer units. Every unit gathers once for
    forward and reduce-scatters its gradient once, both carrying the padded
    unit; units resharded after forward gather again for backward, the root
    never.
    """
    step = {
        FWD: {_key(AG, shard): (N_UNITS, _bytes(api, shard))},
        BWD: {_key(RS, shard): (N_UNITS, _bytes(api, shard))},
    }
    if reshard:
        step[BWD][_key(AG, shard)] = (N_NON_ROOT, _bytes(api, shard, NON_ROOT))
    return step


def no_shard_step(world_size):
    """FSDP1 NO_SHARD: no gather; every unit all-reduces its whole unpadded gradient."""
    return {BWD: {_key(AR, world_size): (N_UNITS, ALL)}}


def fsdp1_step(strategy, world_size):
    """FSDP1 under ``strategy`` on the world."""
    if strategy == "NO_SHARD" or world_size == 1:
        # On one rank FSDP1 turns FULL_SHARD and SHARD_GRAD_OP into NO_SHARD, and
        # still all-reduces each unit, on a group of one.
        return no_shard_step(world_size)
    return flat_step("fsdp1", world_size, reshard=strategy == "FULL_SHARD")


def fsdp2_step(reshard, world_size):
    """FSDP2 on a 1-D mesh over the world."""
    if world_size == 1:
        # A one-rank 1-D mesh: FSDP2 copies locally and issues nothing at all.
        return {}
    return flat_step("fsdp2", world_size, reshard)


def accumulating(step):
    """An unsynchronized micro-batch of ``step``: its gathers, without gradient reductions.

    The next micro-batch is a normal synchronized step (the root, resharded after
    backward, is gathered again in its forward as every step).
    """
    return {
        phase: {k: v for k, v in kinds.items() if not k.startswith((RS, AR))}
        for phase, kinds in step.items()
    }


def hsdp_step(api, replicate, shard):
    """Hybrid sharding on a ``(replicate, shard)`` mesh.

    The flat algorithm runs on the shard group (resharding after forward: FSDP1
    HYBRID_SHARD, FSDP2's default for the layer units), then every unit
    all-reduces its gradient shard (its padded bytes / ``shard``) over the
    replicate group. With a shard group of one rank there is nothing to gather
    or scatter (FSDP2 copies locally); FSDP2 issues the replicate all-reduce even
    on a replicate group of one rank: whenever the mesh is 2-D.
    """
    step = flat_step(api, shard, reshard=True) if shard > 1 else {FWD: {}, BWD: {}}
    step[BWD][_key(AR, replicate)] = (N_UNITS, _bytes(api, shard) // shard)
    return step


def reshard_to_subgroup_step(world_size, subgroup):
    """FSDP2 ``reshard_after_forward=subgroup`` on the world.

    Forward gathers every unit over the world. After forward each layer unit
    keeps ``1 / subgroup`` of the unit as padded for the world, so its backward
    gather runs on a group of ``subgroup`` and still carries the whole padded
    unit (at 8: 3808 B for groups of 2 and 4); gradients reduce-scatter over the
    world.
    """
    everything = _bytes("fsdp2", world_size)
    return {
        FWD: {_key(AG, world_size): (N_UNITS, everything)},
        BWD: {
            _key(AG, subgroup): (N_NON_ROOT, _bytes("fsdp2", world_size, NON_ROOT)),
            _key(RS, world_size): (N_UNITS, everything),
        },
    }


def two_d_shapes(world_size):
    """Meshes with both dimensions above 1: (2, 2) at 4; (2, 4), (4, 2) at 8."""
    return [s for s in meshes.mesh_shapes(world_size) if min(s) > 1]


def subgroup_sizes(world_size):
    """Proper divisors of the world size above 1: [2] at 4, [2, 4] at 8."""
    return [d for d in range(2, world_size) if world_size % d == 0]


@contextlib.contextmanager
def _fsdp2_no_gradient_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


class CollectiveCountsTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _check(self, model, expected, context, accumulate=None, failures=None):
        """Records a step of ``model``, then asserts its table and its parameters.

        Failures go to ``failures`` (raised here when None), so a rank whose count
        differs still joins the reference comparison's collectives.
        """
        own = failures is None
        failures = parity.DeferredFailures() if own else failures
        log = distinct_size_units.record_step(model, self.device, accumulate)
        with failures.check(f"{context}: collectives"):
            collective_count.assert_counts(log, expected, by_group=True, context=context)
        with failures.check(f"{context}: parameters"):
            distinct_size_units.check_parameters(
                model, self.device, context, accumulated=accumulate is not None
            )
        if own:
            failures.raise_if_any()

    @parameterized.named_parameters(
        ("full_shard_fsdp1", "FULL_SHARD"),
        ("shard_grad_op_fsdp1", "SHARD_GRAD_OP"),
        ("no_shard_fsdp1", "NO_SHARD"),
    )
    def test_step_counts_sharding_strategy(self, strategy):
        model = wrapping.wrap_spec(SPEC, "fsdp1", sharding_strategy=strategy)
        expected = fsdp1_step(strategy, self.world_size)
        self._check(model, expected, f"api=fsdp1 sharding_strategy={strategy}")

    @parameterized.named_parameters(("reshard_true_fsdp2", True), ("reshard_false_fsdp2", False))
    def test_step_counts_reshard_after_forward(self, reshard):
        model = distinct_size_units.wrap_fsdp2(self.device, reshard)
        expected = fsdp2_step(reshard, self.world_size)
        self._check(model, expected, f"api=fsdp2 reshard_after_forward={reshard}")

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_step_counts_gradient_accumulation(self, api):
        if api == "fsdp1":
            model = wrapping.wrap_spec(SPEC, api, sharding_strategy="FULL_SHARD")
            synced, accumulate = fsdp1_step("FULL_SHARD", self.world_size), lambda m: m.no_sync()
        else:
            model = distinct_size_units.wrap_fsdp2(self.device, True)
            synced, accumulate = fsdp2_step(True, self.world_size), _fsdp2_no_gradient_sync
        expected = {
            **{"accumulate_" + phase: kinds for phase, kinds in accumulating(synced).items()},
            **synced,
        }
        self._check(model, expected, f"api={api} accumulation", accumulate)

    @parameterized.named_parameters(("nx1_fsdp2", "nx1"), ("1xn_fsdp2", "1xn"))
    def test_step_counts_degenerate_hsdp_mesh(self, which):
        n = self.world_size
        shape = (n, 1) if which == "nx1" else (1, n)
        mesh = meshes.hsdp_mesh(shape, self.device.type)
        model = distinct_size_units.wrap_fsdp2(self.device, mesh=mesh)
        self._check(model, hsdp_step("fsdp2", *shape), f"api=fsdp2 mesh={meshes.shape_name(shape)}")

    def _check_each(self, configs):
        """``_check`` for each ``(label, make_model, expected)``; failures raised together."""
        configs = list(configs)
        # BUILD runs these cases only at sizes that have such configurations.
        self.assertNotEmpty(configs, f"no configuration at world size {self.world_size}")
        failures = parity.DeferredFailures()  # every rank builds every mesh and group
        for label, make_model, expected in configs:
            self._check(make_model(), expected, label, failures=failures)
        failures.raise_if_any()

    def test_step_counts_hybrid_shard_fsdp1(self):
        self._check_each(
            (
                f"api=fsdp1 HYBRID_SHARD mesh={meshes.shape_name(shape)}",
                lambda shape=shape: wrapping.wrap_spec(
                    SPEC,
                    "fsdp1",
                    **meshes.hsdp_wrap_options("fsdp1", shape, self.device.type),
                ),
                hsdp_step("fsdp1", *shape),
            )
            for shape in two_d_shapes(self.world_size)
        )

    def test_step_counts_hybrid_mesh_fsdp2(self):
        self._check_each(
            (
                f"api=fsdp2 mesh={meshes.shape_name(shape)}",
                lambda shape=shape: distinct_size_units.wrap_fsdp2(
                    self.device, mesh=meshes.hsdp_mesh(shape, self.device.type)
                ),
                hsdp_step("fsdp2", *shape),
            )
            for shape in two_d_shapes(self.world_size)
        )

    def test_step_counts_reshard_after_forward_to_subgroup_fsdp2(self):
        self._check_each(
            (
                f"api=fsdp2 reshard_after_forward={d}",
                lambda d=d: distinct_size_units.wrap_fsdp2(self.device, reshard=d),
                reshard_to_subgroup_step(self.world_size, d),
            )
            for d in subgroup_sizes(self.world_size)
        )

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_extra_all_gather_fails_the_count(self, api):
        """One all-gather more than the table, issued in forward, fails with its phase."""
        n = self.world_size
        if api == "fsdp1":
            model = wrapping.wrap_spec(SPEC, api, sharding_strategy="FULL_SHARD")
            expected = fsdp1_step("FULL_SHARD", n)
        else:
            model = distinct_size_units.wrap_fsdp2(self.device, True)
            expected = fsdp2_step(True, n)
        out = torch.empty(n * 4, device=self.device)
        model.register_forward_pre_hook(
            lambda module, args: dist.all_gather_into_tensor(out, torch.ones(4, device=self.device))
        )
        log = distinct_size_units.record_step(model, self.device)
        with self.assertRaises(AssertionError) as caught:
            collective_count.assert_counts(log, expected, by_group=True, context=f"api={api}")
        message = str(caught.exception)
        # The table's forward gathers (none at world size 1), plus 4 float32 from each rank.
        calls, nbytes = expected.get(FWD, {}).get(_key(AG, n), (0, 0))
        extra = 4 * n * 4
        self.assertIn(
            f"rank {self.rank}: collectives differ from the expected table in 1 ", message
        )
        self.assertIn(
            f"phase 'forward', {_key(AG, n)}: expected {calls} calls / {nbytes} B, "
            f"observed {calls + 1} calls / {nbytes + extra} B",
            message,
        )


if __name__ == "__main__":
    multirank.main()
