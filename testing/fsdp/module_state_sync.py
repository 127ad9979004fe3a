"""Helpers for tests that make rank-distinct models identical across ranks.

The models start from ``models.rank_distinct_model(spec, rank)`` (a different
init on every rank), so a sync that does nothing, or one that skips a replica,
leaves some rank with its own init. :func:`assert_synced_and_trains` checks the
synced model against rank 0's init exactly, then trains it and compares it with
the non-FSDP reference.
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint import state_dict as dcp_state_dict

from testing.fsdp import models, params, parity, training, wrapping
from testing.fsdp.models import ModelSpec


def wrap_rank_distinct(
    spec: ModelSpec, api: str, rank: int, *, device=None, **wrap_options
) -> nn.Module:
    """``models.rank_distinct_model(spec, rank)`` wrapped with ``api`` on ``spec.units``.

    ``device`` and ``wrap_options`` go to ``wrapping.wrap`` (default the rank's device).
    """
    return wrapping.wrap(
        models.rank_distinct_model(spec, rank), api, spec.units, device=device, **wrap_options
    )


def set_full_state_from_rank0(model: nn.Module, spec: ModelSpec, rank: int) -> None:
    """Loads rank 0's init into the wrapped ``model`` with ``broadcast_from_rank0``.

    Only rank 0 passes a state dict (its ``rank_distinct_model``); the others pass
    an empty one and must receive rank 0's values through the broadcast.
    """
    state = models.rank_distinct_model(spec, 0).state_dict() if rank == 0 else {}
    dcp_state_dict.set_model_state_dict(
        model,
        state,
        options=dcp_state_dict.StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )


def broadcast_from_rank0(model: nn.Module) -> None:
    """``dist.broadcast`` of every parameter and buffer of an unwrapped model from rank 0."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor, src=0)


def assert_synced_and_trains(
    model: nn.Module,
    spec: ModelSpec,
    *,
    steps: int,
    device=None,
    synced_context: str,
    trained_context: str,
) -> None:
    """Asserts ``model`` holds rank 0's init exactly, then trains like the reference.

    ``synced_context`` and ``trained_context`` are the two assertions' failure contexts;
    both runs' batches go to ``device`` (default the rank's device).
    """
    parity.assert_params_close(
        params.full_params(model, buffers=True),
        params.full_params(models.rank_distinct_model(spec, 0), buffers=True),
        rtol=0,
        atol=0,
        context=synced_context,
    )
    training.train(model, spec, steps=steps, seed=0, device=device)
    reference, _ = training.reference_train(spec, steps=steps, seed=0, device=device)
    parity.assert_params_close(
        params.full_params(model),
        params.full_params(reference),
        context=trained_context,
    )
