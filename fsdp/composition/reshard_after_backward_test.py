"""``set_reshard_after_backward(False)`` keeps parameters gathered for the next micro-batch.

``testing.fsdp.distinct_size_units``'s model (3 units of distinct sizes and root parameters)
under ``fully_shard`` accumulates gradients over 2 micro-batches of rank-distinct data,
each loss divided by 2:

1. ``set_requires_gradient_sync(False)`` and ``set_reshard_after_backward(False)``:
   forward, backward;
2. both back to ``True``: forward, backward (the gradients reduced once).

Pass: after micro-batch 1's backward every parameter is a gathered plain tensor (none
a sharded DTensor) and it reduced nothing; micro-batch 2's forward issues no
all-gather (what the knob is for: no re-gather between micro-batches); its backward
gathers the units again (resharded after that forward) and reduce-scatters each unit
and the root once; afterwards every parameter is sharded
again, and the full gradients equal an unsharded model's accumulated over every rank's
2 micro-batches (float32 tolerance). At world size 1 FSDP2 issues no collectives at
all (torch 2.13), so there only the states and gradients are checked.
"""

from testing import multirank
from fsdp.composition.fixtures import unsharded
from testing.fsdp import accumulation, collective_count, data, params, parity
from testing.fsdp import distinct_size_units

SPEC = distinct_size_units.SPEC
MICRO_BATCHES = 2


class ReshardAfterBackwardTest(multirank.MultiRankTestCase):
    def test_no_reshard_after_backward_skips_next_all_gather_fsdp2(self):
        model = distinct_size_units.wrap_fsdp2(self.device)
        names = sorted(n for n, _ in model.named_parameters())
        logs = []
        gathered = []
        for index in range(MICRO_BATCHES):
            last = index == MICRO_BATCHES - 1
            model.set_requires_gradient_sync(last)
            model.set_reshard_after_backward(last)
            inputs, targets = data.rank_batch(SPEC, seed=0, rank=self.rank, step=index)
            log = collective_count.StepLog()
            with log.recording():
                with log.phase(collective_count.FORWARD):
                    loss = SPEC.loss_fn(model(inputs), targets) / MICRO_BATCHES
                with log.phase(collective_count.BACKWARD):
                    loss.backward()
            logs.append(log)
            gathered.append(unsharded.gathered_names(model))
        actual = params.full_grads(model)  # collective: before any assertion

        reference = accumulation.reference(
            SPEC, range(self.world_size), MICRO_BATCHES, MICRO_BATCHES, self.device
        )
        self.assertEqual(gathered[0], names, "gathered after micro-batch 1's backward")
        self.assertEqual(gathered[1], [], "gathered after the synchronized micro-batch")
        counts = [log.counts() for log in logs]
        # What FSDP2 gathers: each parameter's dim 0 padded to a multiple of the world size.
        unit_bytes = sum(
            distinct_size_units.padded_bytes(u, "fsdp2", self.world_size)
            for u in distinct_size_units.UNITS
        )
        reduced = counts[0].get(collective_count.BACKWARD, {}).get("reduce_scatter")
        self.assertIsNone(reduced, f"micro-batch 1 reduced gradients: {logs[0].describe()}")
        expected = {
            # Nothing to gather: the parameters stayed gathered since micro-batch 1.
            collective_count.FORWARD: {},
            # The units resharded after this forward (reshard_after_forward), so
            # backward gathers them again; the root never reshards after forward.
            collective_count.BACKWARD: {
                "all_gather": (len(distinct_size_units.UNITS), unit_bytes),
                "reduce_scatter": len(distinct_size_units.UNITS) + 1,
            },
        }
        collective_count.assert_counts(
            logs[1],
            expected if self.world_size > 1 else {},  # one rank: FSDP2 issues no collectives
            context="micro-batch 2, after set_reshard_after_backward(False)",
        )
        parity.assert_params_close(
            actual, accumulation.grads(reference), what="accumulated gradient"
        )


if __name__ == "__main__":
    multirank.main()
