"""Ignored modules and parameters stay unsharded and their gradients unreduced.

The output layer ``out`` of a nested MLP is excluded from FSDP (FSDP1
``ignored_modules`` or ``ignored_states``, FSDP2 ``ignored_params``). After one
backward on rank-distinct data, its parameters must be plain tensors of full
shape on every rank, and their gradients must be this rank's own gradient
(equal to a single-process gradient of this rank's batch, different across
ranks), while every other parameter's gradient equals the unsharded gradient of
all ranks' data.
"""

import inspect

import torch
import torch.distributed as dist
from absl.testing import parameterized

from testing import multirank
from testing.fsdp import compat
from testing.fsdp import data
from testing.fsdp import models
from testing.fsdp import params
from testing.fsdp import parity
from testing.fsdp import wrapping

SPEC = models.get("nested_mlp")
IGNORED = "out"


def _ignore_option(api, how, module):
    """The ``extra`` option that makes FSDP ignore ``module``."""
    if api == "fsdp1":
        if how == "modules":
            return {"ignored_modules": [module]}
        return {"ignored_states": list(module.parameters())}
    if "ignored_params" not in inspect.signature(compat.fully_shard).parameters:
        raise AssertionError(f"fully_shard in torch {torch.__version__} has no ignored_params")
    return {"ignored_params": set(module.parameters())}


def _reference_grads(inputs, targets, device):
    """``{name: grad}`` of a plain model after one backward on the given batch."""
    model = SPEC.build(seed=0).to(device)
    SPEC.loss_fn(model(inputs), targets).backward()
    return params.full_grads(model)


class IgnoredModulesTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("ignored_modules_fsdp1", "fsdp1", "modules"),
        ("ignored_states_fsdp1", "fsdp1", "states"),
        ("ignored_params_fsdp2", "fsdp2", "params"),
    )
    def test_ignored_stay_unsharded_and_unreduced(self, api, how):
        model = SPEC.build(seed=0)
        ignored = model.get_submodule(IGNORED)
        shapes = {n: p.shape for n, p in ignored.named_parameters()}
        options = {"use_orig_params": True} if api == "fsdp1" else {}
        model = wrapping.wrap(
            model,
            api,
            SPEC.units,
            extra=_ignore_option(api, how, ignored),
            **options,
        )
        for name, p in ignored.named_parameters():
            self.assertFalse(compat.is_dtensor(p), f"{IGNORED}.{name} was sharded (DTensor)")
            self.assertEqual(p.shape, shapes[name], f"{IGNORED}.{name} shape on this rank")

        inputs, targets = data.rank_batch(SPEC, seed=0, rank=self.rank, step=0)
        SPEC.loss_fn(model(inputs), targets).backward()
        local_grads = {f"{IGNORED}.{n}": p.grad for n, p in ignored.named_parameters()}
        grads = params.full_grads(model)
        norms = [None] * self.world_size
        dist.all_gather_object(norms, [float(g.norm()) for g in local_grads.values()])

        local_ref = _reference_grads(inputs, targets, self.device)
        global_ref = _reference_grads(
            *data.global_batch(SPEC, seed=0, world_size=self.world_size, step=0),
            self.device,
        )
        parity.assert_params_close(
            local_grads,
            {n: local_ref[n] for n in local_grads},
            what="ignored gradient",
            context=f"api={api}: expected this rank's own gradient",
        )
        self.assertLen(
            {tuple(n) for n in norms},
            self.world_size,
            f"ignored gradient norms per rank (should differ): {norms}",
        )
        sharded = {n: g for n, g in grads.items() if not n.startswith(IGNORED + ".")}
        self.assertLen(sharded, len(global_ref) - len(local_grads))
        parity.assert_params_close(
            sharded,
            {n: global_ref[n] for n in sharded},
            what="gradient",
            context=f"api={api} sharded parameters",
        )


if __name__ == "__main__":
    multirank.main()
