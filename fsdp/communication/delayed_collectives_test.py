"""Training stays right when the collective side is slow.

Each test trains ``distinct_size_units`` for 3 steps with prefetching on (FSDP1
``forward_prefetch`` and ``BACKWARD_PRE`` with ``limit_all_gathers=False``, so
several gathers can be in flight; FSDP2 with explicit forward and backward
prefetch lists and its default implicit prefetch), while a delay is injected
(``fsdp/communication/fixtures/delays.py``) at one point:

* before every all-gather (unsharded parameters arrive late: forward and
  backward must wait for them),
* before every gradient reduction, reduce-scatter or all-reduce (sharded
  gradients arrive late: the optimizer must wait for them),
* before every optimizer step.

Pass criterion: the parameters and losses equal those of the model trained
without FSDP on all ranks' data (tolerance of float32), and at least one delay
was injected at that point in every step.

On an accelerator the delay is a kernel enqueued on the stream current when the
collective is issued (FSDP's communication stream), so a missing stream wait
makes FSDP read unfilled buffers and the parameters differ. On CPU (gloo)
collectives are synchronous and there are no streams: the same tests run with a
short host sleep before each collective and are plain parity checks.
"""

from absl.testing import parameterized
from torch.distributed.fsdp import BackwardPrefetch

from testing import multirank
from fsdp.communication.fixtures import delays
from testing.fsdp import distinct_size_units, params, parity, training, wrapping

SPEC = distinct_size_units.SPEC
STEPS = 3
POINTS = {
    "all_gather": delays.BEFORE_ALL_GATHER,
    "reduce": delays.BEFORE_REDUCE,
    "optimizer_step": None,
}


def _wrap(api, device):
    if api == "fsdp1":
        return wrapping.wrap_spec(
            SPEC,
            "fsdp1",
            device=device,
            sharding_strategy="FULL_SHARD",
            extra={
                "forward_prefetch": True,
                "limit_all_gathers": False,
                "backward_prefetch": BackwardPrefetch.BACKWARD_PRE,
            },
        )
    model = distinct_size_units.wrap_fsdp2(device, reshard=True)
    layers = model.layers
    layers[0].set_modules_to_forward_prefetch([layers[1], layers[2]])
    layers[2].set_modules_to_backward_prefetch([layers[1], layers[0]])
    return model


class DelayedCollectivesTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        *[(f"before_{point}_{api}", api, point) for api in ("fsdp1", "fsdp2") for point in POINTS]
    )
    def test_matches_reference_with_delay(self, api, point):
        model = _wrap(api, self.device)
        optimizer = training.default_optimizer(model.parameters())
        if POINTS[point] is None:
            injecting = delays.delay_optimizer_step(optimizer, self.device)
        else:
            injecting = delays.delay_collectives(POINTS[point], self.device)
        with injecting as injected:
            losses = training.train(model, SPEC, steps=STEPS, optimizer=optimizer)
        ref, ref_losses = training.reference_train(SPEC, steps=STEPS)
        context = f"api={api} delay before {point} ({injected[:1]})"
        parity.assert_params_close(
            params.full_params(model), params.full_params(ref), context=context
        )
        parity.assert_tensors_close(losses, ref_losses, name="loss", context=context)
        self.assertGreaterEqual(
            len(injected),
            STEPS,
            f"rank {self.rank}: {len(injected)} delays injected before "
            f"{point} in {STEPS} steps [{context}]",
        )


if __name__ == "__main__":
    multirank.main()
