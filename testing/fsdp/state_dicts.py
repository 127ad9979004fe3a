"""Sharded state dicts of FSDP1 and FSDP2 models, in memory and through dcp.

FSDP1 gives a sharded state dict (``ShardedTensor`` values) under
``StateDictType.SHARDED_STATE_DICT``; FSDP2's ``state_dict()`` is sharded
(``DTensor`` values) as it is. These helpers hide the difference.
"""

import contextlib

import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.fsdp import StateDictType

from testing.fsdp import compat


def sharded_context(model: nn.Module, api: str):
    """Context in which ``model.state_dict()``/``load_state_dict()`` are sharded."""
    if api == "fsdp1":
        return compat.FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT)
    return contextlib.nullcontext()


def sharded_state_dict(model: nn.Module, api: str) -> dict:
    """The model's sharded state dict (FSDP1 SHARDED_STATE_DICT, FSDP2 DTensors)."""
    with sharded_context(model, api):
        return model.state_dict()


def load_sharded_state_dict(model: nn.Module, api: str, state: dict) -> None:
    """Loads a sharded state dict into a model sharded the same way."""
    with sharded_context(model, api):
        model.load_state_dict(state)


def dcp_load(model: nn.Module, api: str, path: str, process_group=None) -> None:
    """Reads a dcp checkpoint into ``model``'s own sharded state dict and loads it."""
    with sharded_context(model, api):
        state = model.state_dict()
        dcp.load(state, checkpoint_id=path, process_group=process_group)
        model.load_state_dict(state)


def local_numel(tensor) -> int:
    """Elements this rank holds of a ShardedTensor (FSDP1) or DTensor (FSDP2) value."""
    if compat.is_dtensor(tensor):
        return tensor.to_local().numel()
    return sum(shard.tensor.numel() for shard in tensor.local_shards())
