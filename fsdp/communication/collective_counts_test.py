"""A training step issues exactly the collectives its FSDP configuration implies.

Model: ``sized_chain`` (units ``layers.0``/``layers.1``/``layers.2`` of 576, 1632
and 1200 bytes, plus the root's own 224 bytes: 4 FSDP units, 3632 bytes in all,
3408 bytes outside the root). The second step of a run (after lazy
initialization) is recorded at the dispatcher per phase (forward, backward,
optimizer) and must match, call for call and byte for byte, a table derived
from that structure in each test: every unit all-gathers once in forward; units
that reshard after forward all-gather again in backward, the root never does
(FSDP1 and FSDP2 keep the root unsharded between forward and backward); every
unit reduces its gradient once in backward, unless accumulating; the optimizer
step (elementwise SGD on local shards) issues nothing. An extra, missing or
resized collective fails with the rank, phase, kind and expected versus
observed calls and bytes. Parameters after the step must also equal an
unsharded reference, so counting never replaces correctness.

Covers FSDP1 FULL_SHARD, SHARD_GRAD_OP and NO_SHARD; FSDP2
``reshard_after_forward`` True and False; gradient accumulation (FSDP1
``no_sync``, FSDP2 ``set_requires_gradient_sync(False)``); FSDP2 on the
degenerate 2-D meshes 2x1 and 1x2 at world size 2. World size 4 (HYBRID_SHARD,
a 2x2 mesh, ``reshard_after_forward=2``) is ``collective_counts_ws4_test.py``.
"""

import contextlib

import torch
import torch.distributed as dist
from absl.testing import parameterized

from testing import multirank
from testing.fsdp import cases, collective_count, meshes, sized_chain, wrapping

SPEC = sized_chain.SPEC
B = sized_chain.unit_bytes
ALL = sum(B(u) for u in sized_chain.NUMEL)  # every unit, root included: 3632
NON_ROOT = ALL - B(sized_chain.ROOT)  # units that may reshard after forward: 3408
N_UNITS = len(sized_chain.NUMEL)  # 4: three layers and the root
N_NON_ROOT = N_UNITS - 1

AG, RS, AR = "all_gather", "reduce_scatter", "all_reduce"
FWD, BWD = collective_count.FORWARD, collective_count.BACKWARD

# One synchronized step, per configuration. (calls, bytes) per phase and kind.
FSDP1_STEP = {
    # Gather each unit for forward and, resharded after forward, every unit but
    # the root again for backward; reduce-scatter every unit's gradient.
    "FULL_SHARD": {
        FWD: {AG: (N_UNITS, ALL)},
        BWD: {AG: (N_NON_ROOT, NON_ROOT), RS: (N_UNITS, ALL)},
    },
    # Parameters stay gathered from forward to backward: no backward all-gather.
    "SHARD_GRAD_OP": {FWD: {AG: (N_UNITS, ALL)}, BWD: {RS: (N_UNITS, ALL)}},
    # Nothing is sharded: no all-gather; every unit all-reduces its whole gradient.
    "NO_SHARD": {BWD: {AR: (N_UNITS, ALL)}},
}
FSDP2_STEP = {
    True: FSDP1_STEP["FULL_SHARD"],  # same algorithm: reshard non-root units after forward
    False: FSDP1_STEP["SHARD_GRAD_OP"],
}
# An unsynchronized micro-batch, resharding after forward: gather as usual, but
# no gradient collective (gradients accumulate locally). The next micro-batch
# is a normal synchronized step (the root, resharded after backward, is gathered
# again in its forward as every step).
ACCUMULATE = {FWD: {AG: (N_UNITS, ALL)}, BWD: {AG: (N_NON_ROOT, NON_ROOT)}}


def _hsdp_step(replicate: int, shard: int):
    """FSDP2 on a (replicate, shard) mesh, kinds keyed ``<kind>@<group size>``.

    The flat algorithm runs on the shard group (size ``shard``), then every unit
    all-reduces its gradient shard (ALL / shard bytes) over the replicate group.
    With a shard group of one rank there is nothing to gather or scatter (FSDP2
    copies locally); the replicate all-reduce stays even on a replicate group of
    one rank: FSDP2 issues it whenever the mesh is 2-D.
    """
    step = {FWD: {}, BWD: {f"{AR}@{replicate}": (N_UNITS, ALL // shard)}}
    if shard > 1:
        step[FWD][f"{AG}@{shard}"] = (N_UNITS, ALL)
        step[BWD].update({f"{AG}@{shard}": (N_NON_ROOT, NON_ROOT), f"{RS}@{shard}": (N_UNITS, ALL)})
    return step


def _prefixed(table, prefix):
    return {prefix + phase: kinds for phase, kinds in table.items()}


class CollectiveCountsTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("full_shard_fsdp1", "FULL_SHARD"),
        ("shard_grad_op_fsdp1", "SHARD_GRAD_OP"),
        ("no_shard_fsdp1", "NO_SHARD"),
    )
    def test_step_counts_sharding_strategy(self, strategy):
        model = wrapping.wrap_spec(SPEC, "fsdp1", device=self.device, sharding_strategy=strategy)
        log = sized_chain.record_step(model, self.device)
        collective_count.assert_counts(
            log, FSDP1_STEP[strategy], context=f"api=fsdp1 sharding_strategy={strategy}"
        )
        sized_chain.check_parameters(model, self.device, f"api=fsdp1 sharding_strategy={strategy}")

    @parameterized.named_parameters(("reshard_true_fsdp2", True), ("reshard_false_fsdp2", False))
    def test_step_counts_reshard_after_forward(self, reshard):
        model = sized_chain.wrap_fsdp2(self.device, reshard)
        log = sized_chain.record_step(model, self.device)
        collective_count.assert_counts(
            log, FSDP2_STEP[reshard], context=f"api=fsdp2 reshard_after_forward={reshard}"
        )
        sized_chain.check_parameters(
            model, self.device, f"api=fsdp2 reshard_after_forward={reshard}"
        )

    @parameterized.named_parameters(*cases.API_CASES)
    def test_step_counts_gradient_accumulation(self, api):
        if api == "fsdp1":

            def accumulate(model):
                return model.no_sync()

            model = wrapping.wrap_spec(
                SPEC, api, device=self.device, sharding_strategy="FULL_SHARD"
            )
            synced = FSDP1_STEP["FULL_SHARD"]
        else:

            @contextlib.contextmanager
            def accumulate(model):
                model.set_requires_gradient_sync(False)
                try:
                    yield
                finally:
                    model.set_requires_gradient_sync(True)

            model = sized_chain.wrap_fsdp2(self.device, True)
            synced = FSDP2_STEP[True]
        log = sized_chain.record_step(model, self.device, accumulate)
        expected = {**_prefixed(ACCUMULATE, "accumulate_"), **synced}
        collective_count.assert_counts(log, expected, context=f"api={api} accumulation")
        sized_chain.check_parameters(
            model, self.device, f"api={api} accumulation", accumulated=True
        )

    @parameterized.named_parameters(("2x1_fsdp2", 2, 1), ("1x2_fsdp2", 1, 2))
    def test_step_counts_degenerate_hsdp_mesh(self, replicate, shard):
        self.assertEqual(replicate * shard, self.world_size, "mesh must cover the world")
        # Cached for the ranks' lifetime (a mesh made per test would leak its groups).
        mesh = meshes.hsdp_mesh((replicate, shard), self.device.type)
        model = sized_chain.wrap_fsdp2(self.device, mesh=mesh)
        log = sized_chain.record_step(model, self.device)
        collective_count.assert_counts(
            log,
            _hsdp_step(replicate, shard),
            by_group=True,
            context=f"api=fsdp2 mesh={replicate}x{shard}",
        )
        sized_chain.check_parameters(model, self.device, f"api=fsdp2 mesh={replicate}x{shard}")

    @parameterized.named_parameters(*cases.API_CASES)
    def test_extra_all_gather_fails_the_count(self, api):
        """One all-gather more than the table, issued in forward, fails with its phase."""
        model = (
            wrapping.wrap_spec(SPEC, api, device=self.device, sharding_strategy="FULL_SHARD")
            if api == "fsdp1"
            else sized_chain.wrap_fsdp2(self.device, True)
        )
        out = torch.empty(self.world_size * 4, device=self.device)
        model.register_forward_pre_hook(
            lambda module, args: dist.all_gather_into_tensor(out, torch.ones(4, device=self.device))
        )
        log = sized_chain.record_step(model, self.device)
        with self.assertRaises(AssertionError) as caught:
            collective_count.assert_counts(log, FSDP1_STEP["FULL_SHARD"], context=f"api={api}")
        message = str(caught.exception)
        extra = 4 * self.world_size * 4
        self.assertIn(f"rank {self.rank}: collectives differ", message)
        self.assertIn(
            f"phase 'forward', all_gather: expected {N_UNITS} calls / {ALL} B, "
            f"observed {N_UNITS + 1} calls / {ALL + extra} B",
            message,
        )


if __name__ == "__main__":
    multirank.main()
