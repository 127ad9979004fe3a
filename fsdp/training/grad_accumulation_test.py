"""Gradient accumulation without synchronization equals one large batch.

Each rank runs three micro-batches (rank-distinct data): the first two without
gradient synchronization (FSDP1 ``no_sync()``, FSDP2
``set_requires_gradient_sync(False)``), the last one synchronized, then one
optimizer step. While accumulating, no reduce collective may run and the
gradients must stay local: FSDP1 keeps each rank's own accumulated gradient on
the parameters (checked against a single-process gradient of that rank's data,
and different across ranks); FSDP2 holds no sharded gradient yet. After the
synchronized micro-batch, gradients and the updated parameters must equal a
model trained without FSDP on the one large batch of all micro-batches of all
ranks.
"""

import torch
import torch.distributed as dist
from absl.testing import parameterized

from testing import multirank
from testing.fsdp import accumulation
from testing.fsdp import api_cases
from testing.fsdp import collective_spy
from testing.fsdp import data
from testing.fsdp import models
from testing.fsdp import parity
from testing.fsdp import training
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")
MICRO_BATCHES = 3


def _micro_batch(rank, index, device):
    return data.rank_batch(SPEC, seed=0, rank=rank, step=index, device=device)


class GradAccumulationTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _accumulate(self, model, api):
        """Runs the unsynchronized micro-batches, checking after each; returns nothing."""
        for index in range(MICRO_BATCHES - 1):
            inputs, targets = _micro_batch(self.rank, index, self.device)
            with collective_spy.record_reductions(collective_spy.GRADIENT_REDUCTIONS) as calls:
                if api == "fsdp1":
                    with model.no_sync():
                        (SPEC.loss_fn(model(inputs), targets) / MICRO_BATCHES).backward()
                else:
                    model.set_requires_gradient_sync(False)
                    (SPEC.loss_fn(model(inputs), targets) / MICRO_BATCHES).backward()
            self.assertEqual(
                calls, [], f"gradient collectives during unsynchronized micro-batch {index}"
            )
            if api == "fsdp1":
                local = accumulation.reference(
                    SPEC, [self.rank], index + 1, MICRO_BATCHES, self.device
                )
                parity.assert_params_close(
                    accumulation.grads(model),
                    accumulation.grads(local),
                    what="local gradient",
                    context=f"no_sync micro-batch {index}",
                )
                norm = torch.stack([p.grad.norm() for p in model.parameters()]).norm()
                norms = [None] * self.world_size
                dist.all_gather_object(norms, float(norm))
                self.assertLen(
                    set(norms),
                    self.world_size,
                    f"accumulated local gradient norms per rank: {norms}",
                )
            else:
                sharded = [n for n, p in model.named_parameters() if p.grad is not None]
                self.assertEqual(sharded, [], "sharded gradients set before synchronization")

    @parameterized.named_parameters(
        *api_cases.api_cases_with(fsdp1={"use_orig_params": True}, fsdp2={})
    )
    def test_grad_accumulation_matches_large_batch(self, api, options):
        model = wrapping.wrap_spec(SPEC, api, **options)
        optimizer = training.default_optimizer(model.parameters())
        self._accumulate(model, api)

        if api == "fsdp2":
            model.set_requires_gradient_sync(True)
        inputs, targets = _micro_batch(self.rank, MICRO_BATCHES - 1, self.device)
        accumulation.check_synchronized_step(
            model,
            optimizer,
            lambda: (SPEC.loss_fn(model(inputs), targets) / MICRO_BATCHES).backward(),
            SPEC,
            micro_batches=MICRO_BATCHES,
            context=f"api={api}",
        )


if __name__ == "__main__":
    multirank.main()
