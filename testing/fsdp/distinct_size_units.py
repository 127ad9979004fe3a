"""A chain of FSDP units of distinct sizes whose computation can be traced.

For tests of collective counts and prefetch order: every unit's unsharded
parameters have a different byte size, so the bytes of an all-gather or
reduce-scatter say which unit it was for (:func:`unit_of`), and each unit can
report the start of its forward and of its backward computation to a trace
function (:func:`set_trace`), e.g. :meth:`collective_count.StepLog.mark`.

Layout: ``layers.0`` Linear(8, 16), ``layers.1`` Linear(16, 24), ``layers.2``
Linear(24, 12) (the units, in forward order), then the root's own parameters
``scale`` (4) and ``head`` Linear(12, 4). Every parameter's first dimension and
every unit's element count divide by 4, so at shard group sizes 1, 2 and 4 neither
FSDP1 (flat parameter) nor FSDP2 (per-parameter dim-0 shards) pads. At other
sizes both pad, each its own way, and a collective carries the padded size
(:func:`padded_bytes`): at 3, FSDP1 pads the root (56 -> 57 elements), FSDP2
``layers.0`` and the root; at 8, FSDP1 pads ``layers.2`` (300 -> 304), FSDP2
``layers.2`` and the root.
"""

import math

from typing import Callable, ContextManager, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from testing import dist_helpers
from testing.fsdp import collective_count, collective_spy, compat, data, models, params
from testing.fsdp import parity, rank_device, training

UNITS = ("layers.0", "layers.1", "layers.2")
ROOT = "root"
_DIMS = (8, 16, 24, 12)
OUT_DIM = 4

Trace = Optional[Callable[[str], None]]


class _BackwardMark(torch.autograd.Function):
    """Identity whose backward calls ``trace(label)``: the start of a unit's backward."""

    @staticmethod
    def forward(ctx, x, trace, label):
        ctx.trace, ctx.label = trace, label
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.trace(ctx.label)
        return grad, None, None


class Unit(nn.Module):
    """``tanh(Linear(x))`` that reports ``forward <name>`` / ``backward <name>`` to its trace."""

    def __init__(self, name: str, in_dim: int, out_dim: int):
        super().__init__()
        self.name = name
        self.fc = nn.Linear(in_dim, out_dim)
        self.trace: Trace = None

    def forward(self, x):
        """tanh of the layer's output, traced when a trace callback is set."""
        if self.trace is not None:
            # Runs inside the module's forward, so after FSDP's pre-forward unshard.
            self.trace(f"forward {self.name}")
        y = torch.tanh(self.fc(x))
        if self.trace is not None and torch.is_grad_enabled():
            # Last op of the unit: its backward is the unit's first backward op,
            # after FSDP's pre-backward hook on this output.
            y = _BackwardMark.apply(y, self.trace, f"backward {self.name}")
        return y


class DistinctSizeUnits(nn.Module):
    """Three units of distinct sizes, then the root's ``scale`` and ``head``."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            *[Unit(UNITS[i], _DIMS[i], _DIMS[i + 1]) for i in range(len(UNITS))]
        )
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, OUT_DIM))
        self.head = nn.Linear(_DIMS[-1], OUT_DIM)

    def forward(self, x):
        """The chain of units, then the root's head applied functionally, scaled."""
        return F.linear(self.layers(x), self.head.weight, self.head.bias) * self.scale


def _batch(gen: torch.Generator, batch_size: int):
    return (
        torch.randn(batch_size, _DIMS[0], generator=gen),
        torch.randn(batch_size, OUT_DIM, generator=gen),
    )


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs.float(), targets.float())


SPEC = models.ModelSpec(
    name="distinct_size_units",
    factory=DistinctSizeUnits,
    units=UNITS,
    make_batch=_batch,
    loss_fn=_mse,
    description="3 units of distinct sizes plus root parameters; traceable",
)

# Shapes of each FSDP unit's parameters (the root's own: scale, head.weight, head.bias).
SHAPES: Dict[str, Tuple[Tuple[int, ...], ...]] = {
    **{UNITS[i]: ((_DIMS[i + 1], _DIMS[i]), (_DIMS[i + 1],)) for i in range(len(UNITS))},
    ROOT: ((OUT_DIM,), (OUT_DIM, _DIMS[-1]), (OUT_DIM,)),
}
# Elements of each unit's parameters: 144, 408, 300 and 56.
NUMEL: Dict[str, int] = {name: sum(math.prod(s) for s in shapes) for name, shapes in SHAPES.items()}


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def unit_bytes(name: str, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of unit ``name``'s unsharded parameters, unpadded: 576, 1632, 1200, 224."""
    return NUMEL[name] * _element_size(dtype)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_bytes(name: str, api: str, shard: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of unit ``name`` unsharded as ``api`` pads it for a shard group of ``shard``.

    What one all-gather or reduce-scatter of the unit carries. FSDP1 flattens the
    unit into one flat parameter and pads it to a multiple of ``shard`` elements
    (``use_orig_params=False``, the suite's default, adds no alignment padding).
    FSDP2 pads each parameter's dim 0 to a multiple of ``shard`` (``torch.chunk``
    gives every rank ``ceil(dim0 / shard)`` rows) and gathers all of a unit's
    parameters in one collective.
    """
    if api == "fsdp1":
        numel = _round_up(NUMEL[name], shard)
    elif api == "fsdp2":
        numel = sum(_round_up(shape[0], shard) * math.prod(shape[1:]) for shape in SHAPES[name])
    else:
        raise ValueError(f"api must be 'fsdp1' or 'fsdp2', got {api!r}")
    return numel * _element_size(dtype)


def unit_of(collective: collective_spy.Collective, api: str) -> str:
    """The unit whose size a collective of ``api`` carries, else ``"<bytes>B"``.

    An all-gather or reduce-scatter carries the unit padded for its group
    (:func:`padded_bytes`); an all-reduce (FSDP1 ``NO_SHARD``) the unpadded unit.
    """
    dtype = collective.dtype or torch.float32
    for name in NUMEL:
        if collective.kind == "all_reduce":
            size = unit_bytes(name, dtype)
        else:
            size = padded_bytes(name, api, collective.group_size, dtype)
        if size == collective.bytes:
            return name
    return f"{collective.bytes}B"


def set_trace(model: nn.Module, trace: Trace) -> None:
    """Makes every :class:`Unit` in ``model`` (wrapped or not) report to ``trace`` (None: off)."""
    for module in model.modules():
        if isinstance(module, Unit):
            module.trace = trace


def wrap_fsdp2(device=None, reshard=None, mesh=None) -> nn.Module:
    """A fresh chain under FSDP2: ``reshard`` on the three layer units, the root on defaults.

    ``reshard`` is ``reshard_after_forward`` (None: torch's default); ``mesh``
    defaults to a 1-D mesh over the world. The root keeps torch's default (not
    resharded after forward, in every release): an explicit
    ``reshard_after_forward=True`` on the root is honoured by torch 2.13 and
    ignored by older releases, so tests leave it out to count the same everywhere.
    ``device`` defaults to the rank's device.
    """
    device = rank_device.resolve(device)
    model = SPEC.build(seed=0).to(device)
    mesh = mesh or compat.init_device_mesh(device.type, (compat.world_size(),))
    options = {} if reshard is None else {"reshard_after_forward": reshard}
    # An int reshard_after_forward makes torch build a post-forward mesh per unit.
    with dist_helpers.torch_made_groups("fully_shard"):
        for unit in UNITS:
            compat.fully_shard(model.get_submodule(unit), mesh=mesh, **options)
        compat.fully_shard(model, mesh=mesh)
    return model


# Step 0 of a counted run initializes FSDP lazily and is not recorded; step 1 is.
RECORDED_STEP = 1
# Batch index of an extra, unsynchronized micro-batch before the recorded step.
ACCUMULATED_BATCH = 100


def record_step(
    model: nn.Module,
    device=None,
    accumulate: Optional[Callable[[nn.Module], ContextManager]] = None,
    trace: bool = False,
    before_forward: Optional[Callable[[nn.Module], None]] = None,
) -> collective_count.StepLog:
    """Trains step 0 unrecorded, then records step 1 per phase; returns the log.

    Args:
      model: the wrapped chain.
      device: where batches go (default the rank's device).
      accumulate: a context factory in which backward does not synchronize
        (``lambda m: m.no_sync()``); step 1 is then two micro-batches: one inside
        that context (phases ``accumulate_forward``/``accumulate_backward``) and
        one synchronized (``forward``/``backward``/``optimizer``).
      trace: also mark ``forward <unit>`` / ``backward <unit>`` in the log
        (:func:`set_trace`) during step 1.
      before_forward: ``fn(model)`` called in the ``forward`` phase of step 1
        just before the forward pass (e.g. an explicit ``unshard``).
    """
    rank = compat.rank()
    optimizer = training.default_optimizer(model.parameters())
    training.train(model, SPEC, steps=[0], optimizer=optimizer, device=device)
    log = collective_count.StepLog()
    if trace:
        set_trace(model, log.mark)
    try:
        _recorded_step(model, device, rank, optimizer, log, accumulate, before_forward)
    finally:
        set_trace(model, None)
    return log


def _recorded_step(model, device, rank, optimizer, log, accumulate, before_forward):
    forward = model if before_forward is None else _CallAfter(before_forward, model)
    with log.recording():
        if accumulate is not None:
            with accumulate(model):
                inputs, targets = data.rank_batch(
                    SPEC, seed=0, rank=rank, step=ACCUMULATED_BATCH, device=device
                )
                collective_count.run_step(
                    log, model, inputs, targets, SPEC.loss_fn, prefix="accumulate_"
                )
        inputs, targets = data.rank_batch(
            SPEC, seed=0, rank=rank, step=RECORDED_STEP, device=device
        )
        collective_count.run_step(log, forward, inputs, targets, SPEC.loss_fn, optimizer)


class _CallAfter:
    """Calls ``fn(model)``, then ``model(*args)``: a hook run inside the forward phase."""

    def __init__(self, fn, model):
        self.fn, self.model = fn, model

    def __call__(self, *args, **kwargs):
        self.fn(self.model)
        return self.model(*args, **kwargs)


def check_parameters(
    model: nn.Module, device=None, context: str = "", accumulated: bool = False
) -> None:
    """Asserts ``model`` after :func:`record_step` equals an unsharded reference.

    The reference trains the same steps on the global batches (and, if
    ``accumulated``, the extra micro-batch before step 1) in this process, on
    ``device`` (default the rank's device). Collective: call on every rank.
    """
    device = rank_device.resolve(device)
    ref = SPEC.build(seed=0).to(device)
    opt = training.default_optimizer(ref.parameters())
    for step in range(RECORDED_STEP + 1):
        batches = ([ACCUMULATED_BATCH] if accumulated and step == RECORDED_STEP else []) + [step]
        for index in batches:
            inputs, targets = data.global_batch(
                SPEC, seed=0, world_size=compat.world_size(), step=index, device=device
            )
            SPEC.loss_fn(ref(inputs), targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    parity.assert_params_close(params.full_params(model), params.full_params(ref), context=context)
