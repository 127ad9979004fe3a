"""Deterministic per-rank and global batches.

Rank ``r``'s batch at step ``s`` is drawn from a generator seeded from
``(seed, r, s)``, so ranks see different data by default.  The global batch
is every rank's batch concatenated in rank order: the input a non-FSDP
reference sees for the same step.

Those global batches grow with the world size. A run that must see the same
data at every world size uses a fixed global batch instead
(:func:`fixed_global_batch`, seeded from ``(seed, s)`` only), of which rank
``r`` takes a contiguous share (:func:`rank_share`).

Batches are drawn on CPU, then moved to ``device``: by default the rank's device
(``rank_device.rank_device()``); outside a rank, pass ``device`` (e.g. ``"cpu"``).
"""

import hashlib
from typing import Any, List, Optional, Tuple, Union

import torch

from testing.fsdp import rank_device
from testing.fsdp.models import Batch, ModelSpec

DEFAULT_BATCH_SIZE = 4


def batch_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit generator seed determined by ``(seed, rank, step)``."""
    digest = hashlib.sha256(f"{seed}/{rank}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _to(batch: Batch, device) -> Batch:
    device = rank_device.resolve(device)
    return tuple(t.to(device) for t in batch)


def rank_batch(
    spec: ModelSpec,
    *,
    seed: int,
    rank: int,
    step: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: Optional[Union[torch.device, str]] = None,
    same_across_ranks: bool = False,
) -> Batch:
    """``(inputs, targets)`` for ``rank`` at ``step`` (rank 0's if ``same_across_ranks``)."""
    gen = torch.Generator().manual_seed(batch_seed(seed, 0 if same_across_ranks else rank, step))
    return _to(spec.make_batch(gen, batch_size), device)


def rank_batches(spec: ModelSpec, *, world_size: int, **batch_args: Any) -> List[Batch]:
    """Every rank's batch for ``step``, in rank order.

    Takes :func:`rank_batch`'s keyword arguments but ``rank`` (``seed`` and ``step``;
    optional ``batch_size``, ``device``, ``same_across_ranks``).
    """
    return [rank_batch(spec, rank=r, **batch_args) for r in range(world_size)]


def global_batch(spec: ModelSpec, **batch_args: Any) -> Batch:
    """All ranks' batches for ``step`` concatenated along dim 0 in rank order.

    Takes :func:`rank_batches`' keyword arguments (``seed``, ``world_size`` and
    ``step``; optional ``batch_size``, ``device``, ``same_across_ranks``).
    """
    return tuple(torch.cat(ts) for ts in zip(*rank_batches(spec, **batch_args)))


def fixed_global_batch(
    spec: ModelSpec,
    *,
    seed: int,
    step: int,
    global_batch_size: int,
    device: Optional[Union[torch.device, str]] = None,
) -> Batch:
    """``global_batch_size`` samples for ``step``, the same at every world size."""
    digest = hashlib.sha256(f"{seed}/global/{step}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return _to(spec.make_batch(gen, global_batch_size), device)


def rank_share(
    spec: ModelSpec,
    *,
    seed: int,
    rank: int,
    world_size: int,
    step: int,
    global_batch_size: int,
    device: Optional[Union[torch.device, str]] = None,
) -> Tuple[Batch, float]:
    """Rank's contiguous rows of :func:`fixed_global_batch`, and its loss weight.

    Shares differ by at most one row when the world size does not divide the
    batch. The weight, ``rows * world_size / global_batch_size``, scales the
    rank's mean loss so that the rank average (what FSDP's gradient averaging
    optimizes) is the global batch's mean loss.
    """
    if global_batch_size < world_size:
        raise ValueError(
            f"a global batch of {global_batch_size} leaves ranks of {world_size} without rows"
        )
    start = global_batch_size * rank // world_size
    stop = global_batch_size * (rank + 1) // world_size
    batch = fixed_global_batch(
        spec, seed=seed, step=step, global_batch_size=global_batch_size, device=device
    )
    return tuple(t[start:stop] for t in batch), (stop - start) * world_size / global_batch_size
