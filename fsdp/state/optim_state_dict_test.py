"""An optimizer state dict round trip lets training continue exactly as without it.

A sharded model is trained with Adam (so the optimizer has per-parameter state:
step, exp_avg, exp_avg_sq) for two steps on rank-distinct data. Its model and
optimizer state dicts are taken, full or sharded (FSDP1
``FSDP.optim_state_dict`` under FULL_STATE_DICT / SHARDED_STATE_DICT and
``FSDP.optim_state_dict_to_load``; FSDP2 ``get_optimizer_state_dict`` /
``set_optimizer_state_dict`` with ``full_state_dict`` true or false), and loaded
into a fresh, differently initialized model with a fresh Adam. The loaded
optimizer's full state must equal the original's, and two more steps of the
reloaded pair must give exactly the parameters of the uninterrupted run.
"""

import copy

import torch
from absl.testing import parameterized
from torch.distributed.checkpoint import state_dict as dcp_state_dict
from torch.distributed.fsdp import (
    FullOptimStateDictConfig,
    FullStateDictConfig,
    ShardedOptimStateDictConfig,
    ShardedStateDictConfig,
    StateDictType,
)

from testing import multirank
from testing.fsdp import compat, models, params, parity, training, wrapping

SPEC = models.get("nested_mlp")


def _adam(model):
    return torch.optim.Adam(model.parameters(), lr=1e-2)


def _fsdp1_context(model, full):
    if full:
        return compat.FSDP.state_dict_type(
            model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(rank0_only=False),
            FullOptimStateDictConfig(rank0_only=False),
        )
    return compat.FSDP.state_dict_type(
        model,
        StateDictType.SHARDED_STATE_DICT,
        ShardedStateDictConfig(),
        ShardedOptimStateDictConfig(),
    )


def save_state(model, opt, api, full):
    """(model state dict, optimizer state dict), full or sharded."""
    if api == "fsdp1":
        with _fsdp1_context(model, full):
            return model.state_dict(), compat.FSDP.optim_state_dict(model, opt)
    options = dcp_state_dict.StateDictOptions(full_state_dict=full)
    return dcp_state_dict.get_state_dict(model, opt, options=options)


def load_state(model, opt, api, full, model_state, optim_state):
    """Loads what :func:`save_state` returned into a fresh model and optimizer."""
    if api == "fsdp1":
        with _fsdp1_context(model, full):
            model.load_state_dict(model_state)
            opt.load_state_dict(compat.FSDP.optim_state_dict_to_load(model, opt, optim_state))
        return
    options = dcp_state_dict.StateDictOptions(full_state_dict=full)
    dcp_state_dict.set_state_dict(
        model, opt, model_state_dict=model_state, optim_state_dict=optim_state, options=options
    )


def full_optim_state(model, opt, api):
    """``{"<param>/<state key>": CPU tensor}`` of the full optimizer state (collective)."""
    _, state = save_state(model, opt, api, full=True)
    out = {}
    for name, entries in state["state"].items():
        for key, value in entries.items():
            value = torch.as_tensor(value)
            out[f"{params.clean_name(str(name))}/{key}"] = value.detach().to("cpu").float()
    return out


class OptimStateDictTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("full_fsdp1", "fsdp1", True),
        ("sharded_fsdp1", "fsdp1", False),
        ("full_fsdp2", "fsdp2", True),
        ("sharded_fsdp2", "fsdp2", False),
    )
    def test_optim_state_dict_round_trip_continues_training(self, api, full):
        what = f"api={api} {'full' if full else 'sharded'} state dicts"
        model = wrapping.wrap_spec(SPEC, api)
        opt = _adam(model)
        training.train(model, SPEC, steps=[0, 1], optimizer=opt)
        # A copy, as a checkpoint would be: the optimizer state dict holds the live
        # state tensors (Adam's step counters, DTensor moments) that the
        # uninterrupted run below keeps updating in place, and
        # Optimizer.load_state_dict does not copy tensors already in place.
        model_state, optim_state = copy.deepcopy(save_state(model, opt, api, full))

        fresh = wrapping.wrap_spec(SPEC, api, seed=1)
        fresh_opt = _adam(fresh)
        load_state(fresh, fresh_opt, api, full, model_state, optim_state)
        expected_state = full_optim_state(model, opt, api)
        self.assertLen(
            expected_state,
            3 * len(params.full_params(model)),
            "Adam keeps step, exp_avg and exp_avg_sq per parameter",
        )
        parity.assert_params_close(
            full_optim_state(fresh, fresh_opt, api),
            expected_state,
            rtol=0,
            atol=0,
            what="optimizer state",
            context=f"after load, {what}",
        )

        # The uninterrupted run, then the reloaded one.
        training.train(model, SPEC, steps=[2, 3], optimizer=opt)
        training.train(fresh, SPEC, steps=[2, 3], optimizer=fresh_opt)
        parity.assert_params_close(
            params.full_params(fresh),
            params.full_params(model),
            context=f"two steps after reload vs uninterrupted, {what}",
        )


if __name__ == "__main__":
    multirank.main()
