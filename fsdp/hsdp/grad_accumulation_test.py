"""Gradient accumulation under hybrid sharding equals one large batch.

Each rank runs three micro-batches of rank-distinct data on a hybridly sharded
``nested_mlp`` (mesh ``testing.fsdp.meshes.hybrid_shape``: 2 x 2 at world size 4,
4 x 2 at 8; at prime N, N x 1 for FSDP2 and 1 x N for FSDP1, whose N x 1 case is a
known failure of parity_test). The first two micro-batches accumulate:

* FSDP1 ``HYBRID_SHARD`` / ``_HYBRID_SHARD_ZERO2`` inside ``no_sync()``: no gradient
  collective at all;
* FSDP2 ``set_requires_gradient_sync(False)``: no gradient collective at all;
* FSDP2 ``set_requires_all_reduce(False)``: the reduce-scatter within each replica
  runs (when shard groups have more than one rank) but no all-reduce across
  replicas.

The third micro-batch synchronizes (sync re-enabled), then one optimizer step.
Pass: the collectives during accumulation are as listed; after the synchronized
micro-batch every rank's full gradients equal those of a model trained without
FSDP on all micro-batches of all ranks concatenated (mean loss), and after the
step so do the full parameters. A replica that drops what it accumulated, or
whose accumulated part misses the replica all-reduce, diverges.
"""

from absl.testing import parameterized

from testing import multirank
from testing.fsdp import (
    accumulation,
    collective_spy,
    data,
    meshes,
    models,
    training,
)
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")
MICRO_BATCHES = 3

# (case name, api, how the model accumulates, wrap options)
CASES = (
    ("no_sync_hybrid_shard_fsdp1", "fsdp1", "no_sync", {"strategy": "HYBRID_SHARD"}),
    ("no_sync_hybrid_shard_zero2_fsdp1", "fsdp1", "no_sync", {"strategy": "_HYBRID_SHARD_ZERO2"}),
    ("requires_gradient_sync_false_fsdp2", "fsdp2", "no_gradient_sync", {}),
    ("requires_all_reduce_false_fsdp2", "fsdp2", "no_all_reduce", {}),
)


def _micro_batch(rank, index, device):
    return data.rank_batch(SPEC, seed=0, rank=rank, step=index, device=device)


class HsdpGradAccumulationTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _wrap(self, api, shape, hybrid):
        options = meshes.hsdp_wrap_options(api, shape, self.device.type, **hybrid)
        if api == "fsdp1":
            options["use_orig_params"] = True  # full_grads needs it
        return wrapping.wrap_spec(SPEC, api, **options)

    def _backward(self, model, index):
        inputs, targets = _micro_batch(self.rank, index, self.device)
        (SPEC.loss_fn(model(inputs), targets) / MICRO_BATCHES).backward()

    def _accumulate(self, model, mode, shape, context):
        """Runs the unsynchronized micro-batches and checks their collectives."""
        for index in range(MICRO_BATCHES - 1):
            with collective_spy.record_reductions(collective_spy.GRADIENT_REDUCTIONS) as calls:
                if mode == "no_sync":
                    with model.no_sync():
                        self._backward(model, index)
                else:
                    if mode == "no_gradient_sync":
                        model.set_requires_gradient_sync(False)
                    else:
                        model.set_requires_all_reduce(False)
                    self._backward(model, index)
            names = [name for name, _ in calls]
            where = f"rank {self.rank}: micro-batch {index}, {context}"
            if mode == "no_all_reduce":
                self.assertNotIn(
                    "all_reduce",
                    names,
                    f"{where}: all-reduce across replicas while accumulating; collectives: {names}",
                )
                if shape[1] > 1:
                    self.assertNotEmpty(
                        names, f"{where}: no reduce-scatter within the replica while accumulating"
                    )
            else:
                self.assertEqual(
                    names, [], f"{where}: gradient collectives while accumulating without sync"
                )

    @parameterized.named_parameters(*CASES)
    def test_hsdp_grad_accumulation_matches_large_batch(self, api, mode, hybrid):
        shape = meshes.hybrid_shape(self.world_size, min_shard=2 if api == "fsdp1" else 1)
        context = " ".join(
            [f"api={api}", mode, f"mesh={meshes.shape_name(shape)}"]
            + [f"{k}={v}" for k, v in hybrid.items()]
        )
        model = self._wrap(api, shape, hybrid)
        optimizer = training.default_optimizer(model.parameters())
        self._accumulate(model, mode, shape, context)

        if mode == "no_gradient_sync":
            model.set_requires_gradient_sync(True)
        elif mode == "no_all_reduce":
            model.set_requires_all_reduce(True)
        accumulation.check_synchronized_step(
            model,
            optimizer,
            lambda: self._backward(model, MICRO_BATCHES - 1),
            SPEC,
            micro_batches=MICRO_BATCHES,
            context=context,
        )


if __name__ == "__main__":
    multirank.main()
