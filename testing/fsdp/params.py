"""Full (unsharded) parameters, buffers and gradients as plain CPU tensors.

:func:`full_params` works on plain modules, FSDP1-wrapped modules (via
``FSDP.summon_full_params``) and FSDP2-sharded modules (via
``DTensor.full_tensor()``) and returns names as in the unwrapped model
(wrapper prefixes such as ``_fsdp_wrapped_module.`` are removed), so results
from an FSDP run and a reference run can be compared key by key.

For FSDP models these functions are collectives: call them on every rank.
"""

import contextlib
from typing import Dict, Iterable, Optional, Tuple

import torch
from torch import nn

from testing.fsdp import compat

# Name components inserted by wrappers that have no counterpart in the
# unwrapped model: FSDP1, activation checkpointing, torch.compile.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """Removes FSDP1 / checkpoint-wrapper / compile components from a qualified name."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _to_full_cpu(t: torch.Tensor) -> torch.Tensor:
    if compat.is_dtensor(t):
        mesh_type = t.device_mesh.device_type
        if t.device.type != mesh_type:
            # CPU-offloaded FSDP2 shard: gather on the mesh's device (NCCL
            # cannot all-gather CPU tensors).
            local = t.to_local().to(compat.current_device(mesh_type))
            t = compat.DTensor.from_local(
                local, t.device_mesh, t.placements, shape=t.shape, stride=t.stride()
            )
        t = t.full_tensor()
    return t.detach().to("cpu", copy=True)


def _unique_named(items: Iterable[Tuple[str, torch.Tensor]]):
    """Drops aliases of an already seen tensor (tied weights) by identity or storage."""
    seen_ids, seen_storage = set(), set()
    for name, t in items:
        key = None
        if not compat.is_dtensor(t) and t.numel() > 0:
            key = (
                t.untyped_storage().data_ptr(),
                t.storage_offset(),
                tuple(t.shape),
                tuple(t.stride()),
                t.dtype,
            )
        if id(t) in seen_ids or (key is not None and key in seen_storage):
            continue
        seen_ids.add(id(t))
        if key is not None:
            seen_storage.add(key)
        yield name, t


def _fsdp1_context(model: nn.Module, with_grads: bool):
    if not compat.is_fsdp1(model):
        return contextlib.nullcontext()
    return compat.FSDP.summon_full_params(
        model, recurse=True, writeback=False, rank0_only=False, with_grads=with_grads
    )


def full_params(model: nn.Module, *, buffers: bool = False) -> Dict[str, torch.Tensor]:
    """``{name: full CPU tensor}`` for every parameter (and buffer if ``buffers``).

    Tied parameters appear once, under their first name (as in
    ``named_parameters()``).  Persistent and non-persistent buffers are both
    included when ``buffers`` is true.
    """
    out: Dict[str, torch.Tensor] = {}
    with _fsdp1_context(model, with_grads=False):
        for name, p in _unique_named(model.named_parameters()):
            out[clean_name(name)] = _to_full_cpu(p)
        if buffers:
            for name, b in model.named_buffers():
                out[clean_name(name)] = _to_full_cpu(b)
    return out


def full_grads(model: nn.Module) -> Dict[str, Optional[torch.Tensor]]:
    """``{name: full CPU gradient or None}`` for every parameter.

    FSDP1 needs ``use_orig_params=True`` for this (a torch restriction of
    ``summon_full_params(with_grads=True)``); FSDP2 and plain modules always work.
    """
    if compat.is_fsdp1(model):
        for m in model.modules():
            if isinstance(m, compat.FSDP) and not getattr(m, "_use_orig_params", True):
                raise ValueError("full_grads on FSDP1 requires use_orig_params=True")
    out: Dict[str, Optional[torch.Tensor]] = {}
    with _fsdp1_context(model, with_grads=True):
        for name, p in _unique_named(model.named_parameters()):
            out[clean_name(name)] = None if p.grad is None else _to_full_cpu(p.grad)
    return out


def local_device_types(model: nn.Module, *, grads: bool = False) -> Dict[str, Optional[str]]:
    """``{name: device type}`` of this rank's local parameters (or their gradients).

    A DTensor (FSDP2) counts by its local shard; a missing gradient is ``None``,
    kept so that a caller can tell it from a gradient on the wrong device.
    """
    out: Dict[str, Optional[str]] = {}
    for name, p in model.named_parameters():
        t = p.grad if grads else p
        if t is not None and compat.is_dtensor(t):
            t = t.to_local()
        out[clean_name(name)] = None if t is None else t.device.type
    return out
