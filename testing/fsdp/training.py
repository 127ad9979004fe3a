"""Training loops for an FSDP model and for its non-FSDP reference.

:func:`train` runs ``steps`` optimizer steps of a (wrapped) model on this
rank's batches and returns the loss averaged over ranks per step.
:func:`reference_train` trains a fresh, unwrapped copy (same seed) in this
process on the global batch of every step and returns ``(model, losses)``.
With equal per-rank batch sizes and mean losses, the global-batch mean loss
equals the rank average that FSDP's gradient averaging optimizes, so the two
runs should agree up to floating-point reduction order.  Models with
``spec.local_batch_stats`` (BatchNorm) instead run each rank's batch
separately in the reference and average the losses.

:func:`check_against_reference` does wrap + train + reference + compare in one call.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn

from testing.fsdp import at_world_size, collective_spy, compat, data, params, parity, rank_device
from testing.fsdp import wrapping
from testing.fsdp.models import ModelSpec

OptimFn = Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]
# A step count, or the batch indices of the steps to run.
Steps = Union[int, Sequence[int]]
# step -> keyword arguments for the model's forward at that step.
ForwardKwargs = Callable[[int], Dict[str, Any]]


def default_optimizer(parameters) -> torch.optim.Optimizer:
    """SGD with momentum (elementwise, so flat/sharded params behave like unsharded ones)."""
    return torch.optim.SGD(parameters, lr=0.05, momentum=0.9)


def _trainable(model: nn.Module):
    return [p for p in model.parameters() if p.requires_grad]


def step_indices(steps: Steps) -> Sequence[int]:
    """``range(steps)`` for a count, else the given batch indices unchanged."""
    return range(steps) if isinstance(steps, int) else steps


def _batch_args(
    seed: int, batch_size: int, device, same_across_ranks: bool, global_batch_size=None
) -> Dict[str, Any]:
    """The ``data`` batch arguments that the FSDP run and its reference share."""
    if global_batch_size is None:
        return dict(
            seed=seed, batch_size=batch_size, device=device, same_across_ranks=same_across_ranks
        )
    if same_across_ranks:
        raise ValueError("global_batch_size splits one batch: ranks cannot all get rank 0's")
    return dict(seed=seed, device=device, global_batch_size=global_batch_size)


def _rank_step_batch(spec: ModelSpec, rank: int, world: int, step: int, batch_args):
    """This rank's ``(inputs, targets)`` at ``step`` and the weight of its mean loss."""
    if "global_batch_size" in batch_args:
        return data.rank_share(spec, rank=rank, world_size=world, step=step, **batch_args)
    return data.rank_batch(spec, rank=rank, step=step, **batch_args), 1.0


def _backward_and_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    step: int,
    before_step: Optional[Callable[[nn.Module, int], None]],
) -> None:
    """Backward of ``loss``, ``before_step(model, step)`` if given, optimizer step, zero grads."""
    loss.backward()
    if before_step is not None:
        before_step(model, step)
    opt.step()
    opt.zero_grad(set_to_none=True)


def train(
    model: nn.Module,
    spec: ModelSpec,
    *,
    steps: Steps = 3,
    seed: int = 0,
    batch_size: int = data.DEFAULT_BATCH_SIZE,
    device=None,
    optim_fn: OptimFn = default_optimizer,
    optimizer: Optional[torch.optim.Optimizer] = None,
    before_step: Optional[Callable[[nn.Module, int], None]] = None,
    same_across_ranks: bool = False,
    forward_kwargs: Optional[ForwardKwargs] = None,
    global_batch_size: Optional[int] = None,
    data_rank: Optional[int] = None,
) -> List[float]:
    """Trains ``model`` on this rank's batches; returns the rank-averaged loss per step.

    Args:
      model: a wrapped model (or plain; outside a rank, pass ``device``).
      spec: its :class:`ModelSpec` (batch maker and loss).
      steps: a number of steps (batches 0..steps-1), or the batch indices to
        train on, e.g. ``range(2, 4)`` to continue after a checkpoint.
      device: where batches go; default the rank's device (FSDP computes there
        even when parameters are offloaded to CPU).
      optim_fn: builds the optimizer from the trainable parameters.
      optimizer: an existing optimizer to step instead (its state carries over
        between calls); ``optim_fn`` is then unused.
      before_step: ``fn(model, step)`` called after backward, before the
        optimizer step (e.g. to inspect or perturb gradients).
      same_across_ranks: give every rank rank 0's batch.
      forward_kwargs: ``fn(step) -> dict`` of keyword arguments for the
        forward at that step (e.g. a step-dependent flag).
      global_batch_size: instead of ``batch_size`` rows per rank, split one
        global batch of this many rows, the same at every world size, across
        the ranks (``data.rank_share``; each rank's mean loss weighted by its
        share, so the rank average is the global mean).
      data_rank: whose batches to train on (default this rank's): ranks that
        split one model by tensor parallelism share their group's index
        (``meshes.data_rank``); the loss is still averaged over every rank.
    """
    device = rank_device.resolve(device)
    rank, world = compat.rank(), compat.world_size()
    rank = rank if data_rank is None else data_rank
    opt = optimizer if optimizer is not None else optim_fn(_trainable(model))
    batch_args = _batch_args(seed, batch_size, device, same_across_ranks, global_batch_size)
    losses = []
    for step in step_indices(steps):
        (inputs, targets), weight = _rank_step_batch(spec, rank, world, step, batch_args)
        kwargs = forward_kwargs(step) if forward_kwargs is not None else {}
        loss = spec.loss_fn(model(inputs, **kwargs), targets)
        if weight != 1.0:
            loss = loss * weight
        _backward_and_step(model, opt, loss, step, before_step)
        losses.append(loss.detach().float())
    stacked = torch.stack(losses) if losses else torch.zeros(0, device=device)
    if world > 1:
        dist.all_reduce(stacked)
        stacked = stacked / world
    return [float(x) for x in stacked.cpu()]


def reference_train(
    spec: ModelSpec,
    *,
    steps: Steps = 3,
    seed: int = 0,
    world_size: Optional[int] = None,
    batch_size: int = data.DEFAULT_BATCH_SIZE,
    device=None,
    optim_fn: OptimFn = default_optimizer,
    same_across_ranks: bool = False,
    forward_kwargs: Optional[ForwardKwargs] = None,
    before_step: Optional[Callable[[nn.Module, int], None]] = None,
    model: Optional[nn.Module] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    global_batch_size: Optional[int] = None,
) -> Tuple[nn.Module, List[float]]:
    """Trains ``spec.build(seed)`` without FSDP on the global batches; no collectives.

    ``batch_size`` is per rank, as in :func:`train`.  Returns
    ``(model, losses)``; the model stays on ``device`` (default the rank's device;
    ``device="cpu"`` for a CPU reference).
    ``forward_kwargs``, ``before_step`` and ``global_batch_size`` (the fixed
    global batch, whatever the world size) are as in :func:`train`. To continue a reference run
    (e.g. ``steps=range(2, 4)``, or at another ``world_size``), pass the
    ``model`` it returned and its ``optimizer`` (build both yourself: the
    optimizer must be given with the model); ``optim_fn`` is then unused.
    """
    if (model is None) != (optimizer is None):
        raise ValueError("reference_train: pass model and optimizer together, or neither")
    world_size = compat.world_size() if world_size is None else world_size
    device = rank_device.resolve(device)
    if model is None:
        model = spec.build(seed).to(device)
        optimizer = optim_fn(_trainable(model))
    opt = optimizer
    batch_args = _batch_args(seed, batch_size, device, same_across_ranks, global_batch_size)
    losses = []
    for step in step_indices(steps):
        fwd = forward_kwargs(step) if forward_kwargs is not None else {}
        loss = _reference_loss(model, spec, step, world_size, batch_args, fwd)
        _backward_and_step(model, opt, loss, step, before_step)
        losses.append(float(loss.detach()))
    return model, losses


def _reference_loss(model, spec: ModelSpec, step: int, world_size: int, batch_args, fwd):
    """The reference's loss at ``step``: the global batch's (the rank average with BatchNorm)."""
    if "global_batch_size" in batch_args:
        if spec.local_batch_stats:
            raise ValueError(f"{spec.name}: a split global batch changes its batch statistics")
        inputs, targets = data.fixed_global_batch(spec, step=step, **batch_args)
        return spec.loss_fn(model(inputs, **fwd), targets)
    kwargs = dict(world_size=world_size, step=step, **batch_args)
    if spec.local_batch_stats:
        per_rank = [spec.loss_fn(model(x, **fwd), y) for x, y in data.rank_batches(spec, **kwargs)]
        return torch.stack(per_rank).mean()
    inputs, targets = data.global_batch(spec, **kwargs)
    return spec.loss_fn(model(inputs, **fwd), targets)


def global_batch_grads(
    spec: ModelSpec, *, world_size: int, step: int = 0, seed: int = 0, device=None
) -> Tuple[nn.Module, Dict[str, Optional[torch.Tensor]]]:
    """``spec``'s unsharded model (seed ``seed``) after one backward on the global batch.

    The global batch is ``world_size`` ranks' batches of ``step``. Returns ``(model,
    {name: CPU gradient})``; the model is on ``device`` (default the rank's device).
    """
    device = rank_device.resolve(device)
    model = spec.build(seed).to(device)
    inputs, targets = data.global_batch(
        spec, seed=seed, world_size=world_size, step=step, device=device
    )
    spec.loss_fn(model(inputs), targets).backward()
    return model, params.full_grads(model)


def check_against_reference(
    spec: ModelSpec,
    api: str,
    *,
    steps: int = 3,
    seed: int = 0,
    device=None,
    units: Optional[Sequence[str]] = None,
    batch_size: int = data.DEFAULT_BATCH_SIZE,
    optim_fn: OptimFn = default_optimizer,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    before_step: Optional[Callable[[nn.Module, int], None]] = None,
    buffers: bool = False,
    forward_kwargs: Optional[ForwardKwargs] = None,
    global_batch_size: Optional[int] = None,
    **wrap_options: Any,
) -> Dict[str, Any]:
    """Wraps ``spec``'s model with ``api``, trains it and a reference, asserts parity.

    Compares the rank-averaged losses and every full parameter (and buffer if
    ``buffers``) with tolerances of the compute dtype of
    ``wrap_options.get("mixed_precision")`` (float32 without).  ``units``
    defaults to ``spec.units``; ``global_batch_size`` is as in :func:`train`.
    Returns a dict with ``model``, ``reference``, ``losses`` and
    ``reference_losses``.
    """
    units = spec.units if units is None else units
    model = wrapping.wrap(spec.build(seed), api, units, device=device, **wrap_options)
    # The same steps, batches and optimizer for the FSDP run and its reference.
    run_args = dict(
        steps=steps,
        seed=seed,
        batch_size=batch_size,
        device=device,
        optim_fn=optim_fn,
        forward_kwargs=forward_kwargs,
        global_batch_size=global_batch_size,
    )
    losses = train(model, spec, before_step=before_step, **run_args)
    ref, ref_losses = reference_train(spec, **run_args)
    dtype = wrapping.compute_dtype(wrap_options.get("mixed_precision"))
    context = f"model={spec.name} api={api} steps={steps}"
    actual = params.full_params(model, buffers=buffers)  # collective: before any assert
    assert_matches_reference(
        actual,
        params.full_params(ref, buffers=buffers),
        losses,
        ref_losses,
        dtype=dtype,
        rtol=rtol,
        atol=atol,
        context=context,
    )
    return {"model": model, "reference": ref, "losses": losses, "reference_losses": ref_losses}


def assert_matches_reference(
    actual: Dict[str, torch.Tensor],
    expected: Dict[str, torch.Tensor],
    losses: Sequence[float],
    reference_losses: Sequence[float],
    *,
    dtype: Optional[torch.dtype] = None,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    rank: Optional[int] = None,
    context: str = "",
) -> None:
    """Asserts full parameters, then per-step losses, match a reference run's.

    ``actual`` and ``expected`` are ``params.full_params`` of the trained model
    (gathered on every rank before calling) and of the reference; the keyword
    arguments go to both ``parity`` assertions.
    """
    parity.assert_params_close(
        actual, expected, rank=rank, dtype=dtype, rtol=rtol, atol=atol, context=context
    )
    parity.assert_tensors_close(
        losses,
        reference_losses,
        name="loss",
        rank=rank,
        dtype=dtype,
        rtol=rtol,
        atol=atol,
        context=context,
    )


def train_recording_reductions(
    model: nn.Module,
    spec: ModelSpec,
    *,
    steps: int,
    optimizer: torch.optim.Optimizer,
    device=None,
    before_step: Optional[Callable[[nn.Module, int], None]] = None,
    before_each: Optional[Callable[[int], None]] = None,
) -> Tuple[List[float], List[List[Tuple[str, Optional[torch.dtype]]]]]:
    """:func:`train` one step at a time, recording each step's gradient reductions.

    ``before_each(step)`` runs before the step (outside the recording). Returns
    ``(losses, reductions)``: ``reductions[step]`` is
    ``collective_spy.record_reductions``' ``(name, input dtype)`` list of that step,
    watching ``at_world_size.reduction_spy_names`` (the reduce-scatters; every
    gradient reduction on one rank, where FSDP1 all-reduces and FSDP2 reduces
    nothing); ``at_world_size.check_gradient_reductions`` checks such a list.
    """
    names = at_world_size.reduction_spy_names(compat.world_size())
    losses, reductions = [], []
    for step in range(steps):
        if before_each is not None:
            before_each(step)
        with collective_spy.record_reductions(names) as calls:
            losses += train(
                model,
                spec,
                steps=[step],
                optimizer=optimizer,
                device=device,
                before_step=before_step,
            )
        reductions.append(calls)
    return losses, reductions
