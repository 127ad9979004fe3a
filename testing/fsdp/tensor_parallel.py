"""FSDP2 over tensor parallelism: 2-D (and 3-D) sharding and what each rank must hold.

:func:`shard_2d` builds :data:`SPEC` (``tp_models.ONE_BLOCK``), splits it with torch's
``parallelize_module`` over the mesh's ``tp`` dimension, then shards it with
``fully_shard`` over the data-parallel part (``dp``, or ``(replicate, shard)``
for hybrid sharding), the order torch documents for 2-D parallelism.

What a rank must hold is derived here from first principles, not from torch's
placements: tensor parallelism takes its ``tp`` chunk of the full parameter
(:func:`tp_models.tp_dim`), and FSDP2 takes its data-parallel chunk of that on
dim 0 (:func:`expected_local`). When both split dim 0, FSDP's chunk is a strided
one of the full tensor; torch records that as ``_StridedShard``
(:func:`expected_placements`).

:func:`reference_grads` gives the unsharded gradients of one step on the global
batch of the data-parallel groups: what 2-D gradients must gather to.
"""

from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import parallelize_module

from testing.fsdp import compat, data, meshes, params, parity, rank_device, tp_models, wrapping

# The model the 2-D tests train: one block carries every placement the plans give.
SPEC = tp_models.ONE_BLOCK


def fsdp_mesh(mesh):
    """The part of a ``(dp, tp)`` or ``(replicate, shard, tp)`` mesh that ``fully_shard`` takes."""
    names = tuple(mesh.mesh_dim_names)
    if names == meshes.DP_TP_DIM_NAMES:
        return mesh["dp"]
    if names == meshes.HSDP_TP_DIM_NAMES:
        return mesh["replicate", "shard"]
    raise ValueError(
        f"expected a mesh named {meshes.DP_TP_DIM_NAMES} or {meshes.HSDP_TP_DIM_NAMES}"
    )


def _shard_dim(mesh) -> str:
    """The name of the mesh dimension FSDP2 shards over (``dp`` or ``shard``)."""
    return "dp" if "dp" in mesh.mesh_dim_names else "shard"


def shard_2d(
    mesh,
    plan: str,
    *,
    device=None,
    seed: int = 0,
    model: Optional[nn.Module] = None,
    **wrap_options,
) -> nn.Module:
    """:data:`SPEC`'s model split by ``plan`` over ``mesh["tp"]``, then ``fully_shard``-ed.

    ``fully_shard`` goes on each of ``SPEC.units``, then the root, over
    :func:`fsdp_mesh`; ``wrap_options`` go to :func:`wrapping.wrap` (e.g.
    ``reshard_after_forward``). ``model`` replaces ``SPEC.build(seed)``. ``device``
    defaults to the rank's device.
    """
    device = rank_device.resolve(device)
    model = SPEC.build(seed) if model is None else model
    model = model.to(device)
    parallelize_module(model, mesh["tp"], tp_models.tp_plan(plan, SPEC.units))
    return wrapping.wrap(
        model, "fsdp2", SPEC.units, device=device, mesh=fsdp_mesh(mesh), **wrap_options
    )


def expected_local(full: torch.Tensor, name: str, plan: str, mesh) -> torch.Tensor:
    """The part of parameter ``name`` (full value ``full``) this rank must hold.

    Tensor parallelism's chunk along :func:`tp_models.tp_dim` (all of it when
    replicated over ``tp``), then FSDP2's chunk of that along dim 0 over the
    sharding dimension (replicas hold the same chunk).
    """
    names = tuple(mesh.mesh_dim_names)
    coordinate = mesh.get_coordinate()
    local = full
    dim = tp_models.tp_dim(name, plan)
    if dim is not None:
        local = local.chunk(mesh.size(names.index("tp")), dim)[coordinate[names.index("tp")]]
    shard = names.index(_shard_dim(mesh))
    return local.chunk(mesh.size(shard), 0)[coordinate[shard]]


def expected_placements(name: str, plan: str, mesh) -> Tuple[Tuple[str, ...], tuple]:
    """``(mesh dimension names, placements)`` parameter ``name`` must have.

    Data-parallel placements first (``Replicate()`` on ``replicate``, dim 0 on
    ``dp``/``shard``), then, for a parameter on the ``tp`` mesh, ``tp``'s. When
    ``tp`` also splits dim 0, FSDP's dim-0 chunk is taken from the ``tp`` chunk,
    so on the full tensor it is strided: ``_StridedShard(0, split_factor=tp)``
    (a plain ``Shard(0)`` when ``tp`` has one rank: a split factor of 1).
    """
    names = tuple(mesh.mesh_dim_names)
    fsdp = (Replicate(),) if "replicate" in names else ()
    dim = tp_models.tp_dim(name, plan)
    if not tp_models.on_tp_mesh(name, plan):
        return tuple(n for n in names if n != "tp"), fsdp + (Shard(0),)
    tp = mesh.size(names.index("tp"))
    if dim == 0 and tp > 1:
        return names, fsdp + (compat.StridedShard(0, split_factor=tp), Shard(0))
    return names, fsdp + (Shard(0), Shard(dim) if dim is not None else Replicate())


def placement_mismatches(model: nn.Module, plan: str, mesh) -> Dict[str, str]:
    """``{name: "expected ..., got ..."}`` for each parameter not placed as required."""
    out = {}
    for name, p in model.named_parameters():
        name = params.clean_name(name)
        want = expected_placements(name, plan, mesh)
        got = (tuple(p.device_mesh.mesh_dim_names), tuple(p.placements))
        if got != want:
            out[name] = f"expected mesh {want[0]} {want[1]}, got mesh {got[0]} {got[1]}"
    return out


def local_shards(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``{name: this rank's local shard on CPU}`` of every (DTensor) parameter."""
    return {
        params.clean_name(n): p.to_local().detach().to("cpu", copy=True)
        for n, p in model.named_parameters()
    }


def expected_shards(full: Dict[str, torch.Tensor], plan: str, mesh) -> Dict[str, torch.Tensor]:
    """:func:`expected_local` of every entry of ``full`` (``{name: full tensor}``)."""
    return {name: expected_local(t, name, plan, mesh) for name, t in full.items()}


def reference_grads(
    *, data_ranks: int, step: int = 0, seed: int = 0, device=None
) -> Tuple[nn.Module, Dict[str, Optional[torch.Tensor]]]:
    """An unsharded :data:`SPEC` model after one backward on the global batch.

    The global batch is the ``data_ranks`` data-parallel groups' batches of
    ``step`` (what a 2-D run trains on, ``tp`` ranks sharing their group's),
    so its gradients are what a 2-D run's must gather to. Returns ``(model,
    {name: CPU gradient})``; the model is on ``device`` (default the rank's device).
    """
    spec = SPEC
    device = rank_device.resolve(device)
    model = spec.build(seed).to(device)
    inputs, targets = data.global_batch(
        spec, seed=seed, world_size=data_ranks, step=step, device=device
    )
    spec.loss_fn(model(inputs), targets).backward()
    return model, params.full_grads(model)


def assert_layout(model: nn.Module, plan: str, mesh, full: Dict[str, torch.Tensor], context: str):
    """Asserts every parameter's placements and, bit for bit, its local shard.

    ``full`` is ``{name: full value}`` the shards must be cut from
    (:func:`expected_shards`); a mismatch names every parameter placed otherwise
    than :func:`expected_placements` says, then every differing shard.
    """
    mismatches = placement_mismatches(model, plan, mesh)
    if mismatches:
        raise AssertionError(
            f"rank {compat.rank()}: {len(mismatches)} parameters placed otherwise than "
            f"requested [{context}]:\n" + "\n".join(f"  {n}: {m}" for n, m in mismatches.items())
        )
    parity.assert_params_close(
        local_shards(model),
        expected_shards(full, plan, mesh),
        rtol=0,
        atol=0,
        what="local shard",
        context=context,
    )
