"""What FSDP does at a given world size, so tests derive their expectations from it.

Tests run at whatever world size their target (or ``--world-size``) gives. Some
behaviours change with it, and a test checks the behaviour that applies there
rather than one size's numbers. Measured with torch 2.13 (CPU, gloo) and 2.11
(one H200, NCCL):

* FSDP1 turns every sharded strategy into ``NO_SHARD`` on a single rank (it
  warns "FSDP is switching to use `NO_SHARD` instead of ..."): each unit's flat
  parameter holds the whole parameters, there is no padded unsharded buffer
  (``_full_param_padded``) and no all-gather, and gradients are all-reduced.
* FSDP2 on a single rank issues no collective at all: parameters are one-shard
  DTensors and the gradient reduce-scatter is skipped.
* Both split a parameter's rows as ``torch.chunk`` does: ``ceil(rows / N)`` rows
  per rank in rank order, ranks past the last chunk holding none. FSDP2 shards
  parameters that way; FSDP1's sharded state dicts (``ShardedTensor``) too,
  while its flat parameters are padded to a multiple of N elements.
"""

from typing import Optional, Sequence, Tuple

from testing.fsdp import collective_spy

REDUCE_SCATTER = "reduce_scatter"
ALL_REDUCE = "all_reduce"


def fsdp1_shards(world_size: int) -> bool:
    """False where FSDP1 replaces a sharded strategy with ``NO_SHARD`` (one rank)."""
    return world_size > 1


def shards(api: str, world_size: int) -> bool:
    """True where ``api`` holds a part of each parameter per rank (FSDP2: always)."""
    return api == "fsdp2" or fsdp1_shards(world_size)


def gradient_reduction(api: str, world_size: int) -> Optional[str]:
    """The collective that reduces gradients: ``"reduce_scatter"``, ``"all_reduce"`` or None.

    None means no collective reduces gradients (FSDP2 on one rank).
    """
    if world_size > 1:
        return REDUCE_SCATTER
    return ALL_REDUCE if api == "fsdp1" else None


def reduction_spy_names(world_size: int) -> Tuple[str, ...]:
    """What ``collective_spy.record_reductions`` should watch to see gradient reductions.

    Every gradient reduction on one rank: ``training.train`` all-reduces no loss
    there, so an all-reduce is FSDP1's ``NO_SHARD`` reduction, and an empty
    record proves FSDP2 reduced nothing. On more ranks, the reduce-scatters only,
    since ``train`` all-reduces its losses.
    """
    if world_size == 1:
        return collective_spy.GRADIENT_REDUCTIONS
    return collective_spy.REDUCE_SCATTERS


def is_gradient_reduction(name: str, api: str, world_size: int) -> bool:
    """True if the ``torch.distributed`` function ``name`` is the expected reduction."""
    kind = gradient_reduction(api, world_size)
    if kind == REDUCE_SCATTER:
        return name in collective_spy.REDUCE_SCATTERS
    return kind is not None and name == kind


def check_gradient_reductions(calls, api: str, world_size: int, dtype, what: str) -> None:
    """Asserts ``record_reductions`` calls are the size's gradient reduction, in ``dtype``.

    Args:
      calls: ``(name, input dtype)`` pairs recorded with
        :func:`reduction_spy_names` (one step, or one micro-batch).
      api: ``"fsdp1"`` or ``"fsdp2"``.
      world_size: the run's world size.
      dtype: the reduce dtype every call must have.
      what: the start of the failure message (API, step).
    """
    kind = gradient_reduction(api, world_size)
    if kind is None:
        if calls:
            raise AssertionError(
                f"{what}: {api} on one rank should reduce no gradients, but called {calls}"
            )
        return
    if not calls:
        raise AssertionError(f"{what}: no gradient {kind} intercepted")
    wrong = [c for c in calls if not is_gradient_reduction(c[0], api, world_size)]
    if wrong:
        raise AssertionError(f"{what}: expected only {kind} at world size {world_size}: {calls}")
    dtypes = {d for _, d in calls}
    if dtypes != {dtype}:
        raise AssertionError(f"{what}: {kind} input dtypes {dtypes}, expected {dtype}: {calls}")


def chunk_rows(rows: int, rank: int, world_size: int) -> int:
    """Rows of a ``rows``-row tensor that ``rank`` holds under ``torch.chunk`` on dim 0."""
    per_rank = -(-rows // world_size)
    return max(0, min(per_rank, rows - rank * per_rank))


def local_numel(shape: Sequence[int], rank: int, world_size: int) -> int:
    """Elements of a tensor of ``shape`` that ``rank`` holds when dim 0 is chunked."""
    if not shape:
        raise ValueError("a 0-d tensor has no dim 0 to chunk")
    numel = chunk_rows(shape[0], rank, world_size)
    for size in shape[1:]:
        numel *= size
    return numel


def has_empty_shard(rows: int, world_size: int) -> bool:
    """True if some rank holds no rows of a ``rows``-row tensor chunked on dim 0."""
    return chunk_rows(rows, world_size - 1, world_size) == 0
