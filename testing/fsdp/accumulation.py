"""The reference and the synchronized-step check of gradient accumulation tests.

A model accumulates ``micro_batches`` scaled losses (each divided by the number
of micro-batches) without gradient sync, then synchronizes on the last one and
steps. :func:`reference` builds the same gradients on a plain model from every
rank's micro-batches; :func:`check_synchronized_step` compares the FSDP run's
gradients and stepped parameters with it.
"""

from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from testing.fsdp import at_world_size, collective_spy, compat, data, params, parity, rank_device
from testing.fsdp import training
from testing.fsdp.models import ModelSpec


def reference(
    spec: ModelSpec, ranks: Sequence[int], micro_batches: int, total: int, device=None
) -> nn.Module:
    """A plain model after backward of the mean loss over ``ranks``' first micro-batches.

    Each micro-batch loss is divided by ``total`` (the FSDP run's micro-batch count)
    times ``len(ranks)``: per rank as the FSDP run scales it, then averaged over the
    ranks as FSDP's reduction does. ``device`` defaults to the rank's device.
    """
    device = rank_device.resolve(device)
    model = spec.build(seed=0).to(device)
    for rank in ranks:
        for index in range(micro_batches):
            inputs, targets = data.rank_batch(spec, seed=0, rank=rank, step=index, device=device)
            loss = spec.loss_fn(model(inputs), targets) / (total * len(ranks))
            loss.backward()
    return model


def grads(model: nn.Module) -> Dict[str, Optional[torch.Tensor]]:
    """``{clean parameter name: .grad}`` of a module's local parameters."""
    return {params.clean_name(n): p.grad for n, p in model.named_parameters()}


def check_synchronized_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    backward: Callable[[], None],
    spec: ModelSpec,
    *,
    micro_batches: int,
    device=None,
    context: str,
) -> None:
    """Runs the synchronized micro-batch and the step; asserts both match the reference.

    ``backward`` runs the last micro-batch's backward (gradient sync already
    re-enabled). Asserts that it ran a gradient collective (none for FSDP2 on
    one rank: ``at_world_size.gradient_reduction``), that the full
    gradients then equal :func:`reference`'s over every rank's ``micro_batches``
    and that the parameters after ``optimizer.step()`` equal the reference's
    after a ``training.default_optimizer`` step. The reference runs on ``device``
    (default the rank's device).
    """
    with collective_spy.record_reductions(collective_spy.GRADIENT_REDUCTIONS) as calls:
        backward()
    synced_grads = params.full_grads(model)
    optimizer.step()
    stepped = params.full_params(model)

    reference_model = reference(
        spec, range(compat.world_size()), micro_batches, micro_batches, device
    )
    ref_grads = grads(reference_model)
    training.default_optimizer(reference_model.parameters()).step()
    api = "fsdp2" if compat.is_fsdp2(model) else "fsdp1"
    if at_world_size.gradient_reduction(api, compat.world_size()) is None:
        if calls:  # FSDP2 on one rank: nothing to reduce
            raise AssertionError(
                f"rank {compat.rank()}: gradient collectives {calls} on one rank, {context}"
            )
    elif not calls:
        raise AssertionError(
            f"rank {compat.rank()}: no gradient collective in the synchronized micro-batch, "
            f"{context}"
        )
    parity.assert_params_close(
        synced_grads,
        ref_grads,
        what="gradient",
        context=f"{context}, after the synchronized micro-batch",
    )
    parity.assert_params_close(
        stepped, params.full_params(reference_model), context=f"{context}, after the optimizer step"
    )
