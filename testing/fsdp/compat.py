"""Version-tolerant imports of the FSDP1 and FSDP2 APIs.

FSDP2 (``fully_shard``) moved from ``torch.distributed._composable.fsdp`` to
``torch.distributed.fsdp`` in torch 2.6; this module imports whichever exists
so the rest of ``testing.fsdp`` works on torch 2.6 and newer.  Names that the
running torch lacks are ``None``; use :func:`has_fsdp2` to feature-detect.
"""

import torch
import torch.distributed as dist
from torch.distributed.fsdp import (  # FSDP1: present in every supported torch.
    CPUOffload,
    FullyShardedDataParallel,
    MixedPrecision,
    ShardingStrategy,
)

try:  # torch >= 2.6
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
    )
except ImportError:  # pragma: no cover - older layout
    try:
        from torch.distributed._composable.fsdp import (
            CPUOffloadPolicy,
            FSDPModule,
            MixedPrecisionPolicy,
            fully_shard,
        )
    except ImportError:
        CPUOffloadPolicy = FSDPModule = MixedPrecisionPolicy = fully_shard = None

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch < 2.5 layout
    try:
        from torch.distributed._tensor import DTensor
    except ImportError:
        DTensor = None

try:
    from torch.distributed.device_mesh import init_device_mesh
except ImportError:  # pragma: no cover
    init_device_mesh = None

# FSDP1 and FSDP2 import torch._dynamo lazily on their first forward (their hooks
# are wrapped in torch._dynamo.disable), about 1 s of CPU in every rank process.
# Importing it here, in the runner that forks the ranks, makes every rank inherit
# it: a world-size-4 test on 2 cores saves about 2.5 s. A plain import of a
# module that torch itself imports, no private call; measured with torch 2.13 (CPU).
try:
    import torch._dynamo  # noqa: F401 (imported for its side effect: see above)
except ImportError:  # pragma: no cover - builds without dynamo import it lazily
    pass

FSDP = FullyShardedDataParallel

__all__ = [
    "CPUOffload",
    "CPUOffloadPolicy",
    "DTensor",
    "FSDP",
    "FSDPModule",
    "FullyShardedDataParallel",
    "MixedPrecision",
    "MixedPrecisionPolicy",
    "ShardingStrategy",
    "fully_shard",
    "has_fsdp2",
    "init_device_mesh",
    "is_fsdp1",
    "is_fsdp2",
    "is_dtensor",
    "current_device",
    "rank",
    "world_size",
    "TorchDispatchMode",
    "device_sleep",
    "dispatched_group_size",
    "set_gradient_divide_factor",
    "set_force_sum_reduction_for_comms",
    "registered_groups",
    "StridedShard",
    "dynamo_explain",
    "dynamo_reset",
    "lookup_backend",
]


def has_fsdp2() -> bool:
    """True if this torch provides FSDP2's ``fully_shard`` and DTensor."""
    return fully_shard is not None and DTensor is not None and init_device_mesh is not None


def is_fsdp1(module: torch.nn.Module) -> bool:
    """True if ``module`` or any submodule is an FSDP1 wrapper."""
    return any(isinstance(m, FullyShardedDataParallel) for m in module.modules())


def is_fsdp2(module: torch.nn.Module) -> bool:
    """True if ``fully_shard`` was applied to ``module`` or any submodule."""
    return FSDPModule is not None and any(isinstance(m, FSDPModule) for m in module.modules())


def is_dtensor(t) -> bool:
    """True if ``t`` is a DTensor (FSDP2 sharded parameter or gradient)."""
    return DTensor is not None and isinstance(t, DTensor)


def world_size() -> int:
    """World size of the default process group, or 1 if none is initialized."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Rank in the default process group, or 0 if none is initialized."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def current_device(device_type: str = "cuda") -> torch.device:
    """This rank's device of ``device_type`` (its current index for accelerators)."""
    if device_type == "cpu":
        return torch.device("cpu")
    module = getattr(torch, device_type, None)
    if module is not None and hasattr(module, "current_device"):
        return torch.device(device_type, module.current_device())
    return torch.device(device_type)


# --- Private torch APIs, isolated here with the versions they were checked on. ---

# Base class of dispatch-level interceptors (collective_spy.observe_collectives).
# torch.utils._python_dispatch.TorchDispatchMode: same constructor and
# __torch_dispatch__(func, types, args, kwargs) protocol in torch 2.6 through 2.13
# (checked: 2.13.0+cpu here; the 2.11 source). The public
# torch.distributed.tensor.debug.CommDebugMode is built on it but keeps only
# per-op counts (no bytes, no order) and installs global module hooks.
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


def device_sleep(device: torch.device, cycles: int) -> bool:
    """Enqueues a kernel that spins ``cycles`` GPU clock cycles on the current stream.

    Uses ``torch.cuda._sleep`` (private; present with the same signature in torch
    2.0 through 2.13, checked in 2.13.0+cpu and the 2.11 source). Returns False
    when this device has no such kernel (CPU, HPU, XPU, or a torch without it),
    so the caller falls back to public work (see ``delays.py``).
    """
    if device.type != "cuda" or not hasattr(torch.cuda, "_sleep"):
        return False
    torch.cuda._sleep(int(cycles))
    return True


def dispatched_group_size(value) -> int:
    """Size of the process group a c10d dispatcher op received, or 0 if ``value`` is none.

    At the dispatcher a ProcessGroup arrives boxed as a ``torch.ScriptObject``;
    ``ProcessGroup.unbox`` (undocumented; present in torch 2.2 through 2.13,
    checked in 2.13.0+cpu) turns it back into the Python object.
    """
    group = value
    if isinstance(value, torch.ScriptObject):
        unbox = getattr(dist.ProcessGroup, "unbox", None)
        if unbox is None:
            return 0
        try:
            group = unbox(value)
        except Exception:  # noqa: BLE001 - another kind of script object
            return 0
    if isinstance(group, dist.ProcessGroup):
        return group.size()
    return 0


def set_gradient_divide_factor(model: torch.nn.Module, factor: float) -> None:
    """Sets FSDP2's gradient divide factor on every ``fully_shard`` module in ``model``.

    The public ``FSDPModule.set_gradient_divide_factor`` (torch 2.8 and newer; checked
    in 2.13, and present in 2.11) applies to one module's parameters only, so it is
    called on each. Reduced gradients are then ``sum over all data-parallel ranks of
    their gradients / factor``, for 1-D and 2-D (HSDP) meshes alike. torch 2.6 and 2.7
    have only ``set_reduce_scatter_divide_factor``, used as a fallback: there the
    factor applies to the reduce-scatter alone and HSDP's all-reduce divides again
    (pytorch#155903), so HSDP tests of the factor fail on those versions, as they
    should.
    """
    for module in model.modules():
        if FSDPModule is None or not isinstance(module, FSDPModule):
            continue
        setter = getattr(module, "set_gradient_divide_factor", None)
        if setter is None:  # torch < 2.8
            setter = module.set_reduce_scatter_divide_factor
        setter(factor)


def set_force_sum_reduction_for_comms(model: torch.nn.Module, enable: bool) -> None:
    """``FSDPModule.set_force_sum_reduction_for_comms(enable)`` on every FSDP2 module.

    With it, FSDP2 reduces with ``ReduceOp.SUM`` only and divides before/after
    the collectives, instead of ``AVG`` or ``PREMUL_SUM`` (which gloo lacks: "Cannot
    use ReduceOp.PREMUL_SUM with Gloo"). Added with ``set_gradient_divide_factor``
    (torch 2.8, pytorch#155915); checked in 2.13. Raises ``RuntimeError`` on older torch.
    """
    for module in model.modules():
        if FSDPModule is None or not isinstance(module, FSDPModule):
            continue
        if not hasattr(module, "set_force_sum_reduction_for_comms"):
            raise RuntimeError(
                f"torch {torch.__version__} has no FSDP2 "
                "set_force_sum_reduction_for_comms (added in 2.8)"
            )
        module.set_force_sum_reduction_for_comms(enable)


def registered_groups():
    """``{group name: global ranks}`` of the process groups this rank belongs to, or None.

    The harness compares it before and after each test (testing/rank_state.py) to
    find groups a test left behind. torch has no public list of groups: it keeps
    them in ``torch.distributed.distributed_c10d._world.pg_names`` (process group ->
    name; private, the same in torch 2.10, 2.12, 2.13 and 2.14, checked on the
    installed releases). Returns None where that registry is missing.
    """
    world = getattr(dist.distributed_c10d, "_world", None)
    names = getattr(world, "pg_names", None)
    if not isinstance(names, dict):
        return None
    return {str(name): tuple(dist.get_process_group_ranks(group)) for group, name in names.items()}


# Placement FSDP2 gives a parameter whose dim 0 tensor parallelism already split:
# FSDP's chunk of the TP chunk is a strided chunk of the full tensor.
# torch.distributed.tensor.placement_types._StridedShard(dim, split_factor=...):
# private; same constructor and equality (dim, split_factor) checked in 2.13.0+cpu
# (repr "_StridedShard(dim=0, sf=2)") and 2.14.1 (repr "_S(0, 2)"): compare objects,
# never reprs.
from torch.distributed.tensor.placement_types import _StridedShard as StridedShard  # noqa: E402


# torch.compile's helpers live in torch._dynamo, which torch documents for these
# uses (troubleshooting: explain, reset) but keeps private. Checked in 2.13.0+cpu.


def dynamo_reset() -> None:
    """``torch._dynamo.reset()``: drops compiled code and guards (ranks serve many tests)."""
    torch._dynamo.reset()


def dynamo_explain(fn):
    """``torch._dynamo.explain(fn)``: call the result with ``fn``'s arguments.

    Returns an ``ExplainOutput`` with ``graph_count``, ``graph_break_count`` and
    ``break_reasons`` (each with ``reason`` and ``user_stack``); same fields in
    2.6 through 2.13 (checked in 2.13.0+cpu).
    """
    return torch._dynamo.explain(fn)


def lookup_backend(name: str):
    """``torch._dynamo.lookup_backend(name)``, e.g. ``"aot_eager"`` or ``"inductor"``."""
    return torch._dynamo.lookup_backend(name)
