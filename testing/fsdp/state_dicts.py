"""Sharded state dicts of FSDP1 and FSDP2 models, in memory and through dcp.

FSDP1 gives a sharded state dict (``ShardedTensor`` values) under
``StateDictType.SHARDED_STATE_DICT``; FSDP2's ``state_dict()`` is sharded
(``DTensor`` values) as it is. These helpers hide the difference.
"""

import contextlib
from typing import Dict

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import state_dict as dsd
from torch.distributed.fsdp import StateDictType

from testing.fsdp import compat, params, parity


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
    """Elements this rank holds of a ShardedTensor (FSDP1) or DTensor (FSDP2) value.

    A plain tensor (FSDP1 ``NO_SHARD``, as on one rank) is held whole.
    """
    if compat.is_dtensor(tensor):
        return tensor.to_local().numel()
    if hasattr(tensor, "local_shards"):
        return sum(shard.tensor.numel() for shard in tensor.local_shards())
    return tensor.numel()


def full_optim_state(model: nn.Module, opt: torch.optim.Optimizer) -> Dict[str, torch.Tensor]:
    """``{"<param>/<state key>": CPU tensor}``, gathered (a collective on the model's ranks)."""
    options = dsd.StateDictOptions(full_state_dict=True)
    state = dsd.get_optimizer_state_dict(model, opt, options=options)["state"]
    return {
        f"{params.clean_name(str(name))}/{key}": torch.as_tensor(value).detach().cpu()
        for name, entries in state.items()
        for key, value in entries.items()
    }


def assert_loaded_exactly(
    actual_params: Dict[str, torch.Tensor],
    actual_optim: Dict[str, torch.Tensor],
    expected_params: Dict[str, torch.Tensor],
    expected_optim: Dict[str, torch.Tensor],
    what: str,
) -> None:
    """Asserts loaded full parameters and optimizer state equal the saved ones bit for bit.

    Gather the actual values (collectives) on every rank before calling it.
    """
    parity.assert_params_close(
        actual_params, expected_params, rtol=0, atol=0, context=f"{what}: after load"
    )
    parity.assert_params_close(
        actual_optim,
        expected_optim,
        rtol=0,
        atol=0,
        what="optimizer state",
        context=f"{what}: after load",
    )
