"""Unsharded references that compute like FSDP mixed precision, for tight comparisons.

A float32 reference differs from a bf16 FSDP run by bf16 rounding (about 1e-2),
which hides a wrong accumulation or reduction dtype (about 1e-3). These
references instead do what FSDP mixed precision is specified to do, without
FSDP: each rank's forward and backward run on a copy of the float32 model cast
to ``param_dtype`` with the inputs cast too, on that rank's batch alone (same
shapes as the rank, hence the same low-precision rounding); the gradients are
then accumulated over micro-batches in ``accum_dtype``, averaged over ranks in
``reduce_dtype``, and applied to the float32 model. Against them, FSDP may
differ only by the order of the float32 reduction.

    grads = mp_reference.accumulated_grads(spec, world_size=2, micro_batches=4,
                                           param_dtype=torch.bfloat16,
                                           accum_dtype=torch.float32)
"""

import copy
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from testing.fsdp import data, rank_device
from testing.fsdp.models import ModelSpec

Grads = Dict[str, Optional[torch.Tensor]]


def low_precision_grads(
    master: nn.Module, spec: ModelSpec, batch, param_dtype: torch.dtype, *, loss_scale: float = 1.0
) -> Tuple[Grads, float]:
    """One batch's gradients computed in ``param_dtype``; returns ``(grads, loss)``.

    ``master`` is not modified: a copy cast to ``param_dtype`` (``requires_grad``
    kept, so frozen parameters get ``None``) runs forward on the floating inputs
    cast to ``param_dtype`` and backward from ``spec.loss_fn(...) * loss_scale``.
    The gradients stay in ``param_dtype``, as FSDP's unsharded gradients are.
    """
    inputs, targets = batch
    low = copy.deepcopy(master).to(param_dtype)
    if inputs.is_floating_point():
        inputs = inputs.to(param_dtype)
    loss = spec.loss_fn(low(inputs), targets)
    (loss * loss_scale).backward()
    grads = {
        name: None if p.grad is None else p.grad.detach() for name, p in low.named_parameters()
    }
    return grads, float(loss.detach())


def _add(total: Grads, grads: Grads, dtype: torch.dtype) -> Grads:
    out = {}
    for name, g in grads.items():
        g = None if g is None else g.to(dtype)
        prev = total.get(name)
        out[name] = g if prev is None else (prev if g is None else prev + g)
    return out


def average_over_ranks(per_rank: Sequence[Grads], reduce_dtype: torch.dtype) -> Grads:
    """The rank average of per-rank gradients, summed in ``reduce_dtype``, as float32.

    A parameter with no gradient on any rank stays ``None``; one missing on some
    ranks counts as zero there (FSDP reduces a zero for it).
    """
    total: Grads = {}
    for grads in per_rank:
        total = _add(total, grads, reduce_dtype)
    return {name: None if g is None else (g / len(per_rank)).float() for name, g in total.items()}


def accumulated_grads(
    spec: ModelSpec,
    *,
    world_size: int,
    micro_batches: int,
    param_dtype: torch.dtype,
    accum_dtype: torch.dtype,
    reduce_dtype: torch.dtype = torch.float32,
    seed: int = 0,
    batch_size: int = data.DEFAULT_BATCH_SIZE,
    device=None,
) -> Grads:
    """float32 gradients of ``micro_batches`` accumulated micro-batches on every rank.

    Rank ``r``'s micro-batch ``k`` is ``data.rank_batch(spec, seed, rank=r, step=k)``
    with loss divided by ``micro_batches``; its ``param_dtype`` gradients are summed
    in ``accum_dtype`` over ``k``, then averaged over ranks in ``reduce_dtype``.
    The model and batches are on ``device`` (default the rank's device).
    """
    device = rank_device.resolve(device)
    master = spec.build(seed).to(device)
    per_rank = []
    for rank in range(world_size):
        acc: Grads = {}
        for k in range(micro_batches):
            batch = data.rank_batch(
                spec, seed=seed, rank=rank, step=k, batch_size=batch_size, device=device
            )
            grads, _ = low_precision_grads(
                master, spec, batch, param_dtype, loss_scale=1.0 / micro_batches
            )
            acc = _add(acc, grads, accum_dtype)
        per_rank.append(acc)
    return average_over_ranks(per_rank, reduce_dtype)


def train(
    spec: ModelSpec,
    *,
    steps: int,
    world_size: int,
    param_dtype: torch.dtype,
    reduce_dtype: torch.dtype = torch.float32,
    seed: int = 0,
    batch_size: int = data.DEFAULT_BATCH_SIZE,
    device=None,
    optim_fn: Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer],
    before_forward: Optional[Callable[[nn.Module, int], None]] = None,
) -> Tuple[nn.Module, List[float]]:
    """Trains ``spec.build(seed)`` as FSDP mixed precision would; returns ``(model, losses)``.

    Each step: every rank's batch in ``param_dtype`` (:func:`low_precision_grads`),
    gradients averaged in ``reduce_dtype`` and set as float32 ``.grad``, then an
    optimizer step on the float32 model. ``before_forward(model, step)`` runs
    first (e.g. to freeze or unfreeze parameters); parameters with
    ``requires_grad=False`` get no gradient. Losses are rank averages. The model and
    batches are on ``device`` (default the rank's device).
    """
    device = rank_device.resolve(device)
    master = spec.build(seed).to(device)
    opt = optim_fn(list(master.parameters()))
    losses = []
    for step in range(steps):
        if before_forward is not None:
            before_forward(master, step)
        per_rank, step_losses = [], []
        for rank in range(world_size):
            batch = data.rank_batch(
                spec, seed=seed, rank=rank, step=step, batch_size=batch_size, device=device
            )
            grads, loss = low_precision_grads(master, spec, batch, param_dtype)
            per_rank.append(grads)
            step_losses.append(loss)
        averaged = average_over_ranks(per_rank, reduce_dtype)
        for name, p in master.named_parameters():
            p.grad = averaged.get(name)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(sum(step_losses) / world_size)
    return master, losses
