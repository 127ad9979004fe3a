"""``StateDictOptions(cpu_offload=True)`` gives CPU snapshots that later steps leave alone.

``nested_mlp`` under ``fully_shard`` trains 3 SGD (momentum) steps on rank-distinct
data. After each step it takes ``get_model_state_dict`` and ``get_optimizer_state_dict``
with ``cpu_offload=True``, sharded (every rank) in one case, full
(``full_state_dict=True``, which with ``cpu_offload`` fills rank 0 only) in the other.
Pass, checked after the last step so that later steps had the chance to change earlier
copies:

* every tensor of every copy (a DTensor's local shard) lives on CPU;
* each copy equals the unsharded reference at its step (float32 tolerance): full
  copies entry by entry, sharded copies shard by shard (this rank's dim-0 chunk of
  the reference's parameter and momentum buffer); other ranks' full copies are empty;
* no copy shares storage with the previous step's copy or with the live parameters
  and optimizer state: it is a snapshot, not a view that the next step rewrites.

Found with torch 2.13 (CPU, gloo): the sharded case fails. Its "copies" are the live
local shards themselves (``Tensor.to("cpu")`` of a CPU tensor), so the copy taken after
step 0 shares their storage and reads as the values of step 2; a known failure below.
At world size 1 the full case fails the same way (the full tensor of a 1-rank mesh is
the local shard).
"""

import torch
from absl.testing import parameterized
from torch.distributed.checkpoint import state_dict as dsd

from testing import known_failures
from testing import multirank
from testing.fsdp import compat, models, params, parity, training, wrapping

SPEC = models.get("nested_mlp")
STEPS = 3
SHARDED = dsd.StateDictOptions(cpu_offload=True)
FULL = dsd.StateDictOptions(cpu_offload=True, full_state_dict=True)


def _flat(state, prefix=""):
    """``{"a/b/c": tensor}`` of the tensors in a nested state dict (optimizer keys as str)."""
    out = {}
    for key, value in state.items():
        name = f"{prefix}{params.clean_name(str(key))}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "/"))
        elif torch.is_tensor(value) and (value.ndim > 0 or compat.is_dtensor(value)):
            out[name] = value
    return out


def _snapshot(model, optimizer, options):
    """Model and optimizer state under ``options``, flattened to ``{name: tensor}``."""
    state = dict(_flat(dsd.get_model_state_dict(model, options=options), "model/"))
    optim = dsd.get_optimizer_state_dict(model, optimizer, options=options)
    state.update(_flat(optim.get("state", {}), "optim/"))
    return state


def _storages(tensors):
    """Storage addresses of ``tensors`` (local shards for DTensors)."""
    out = set()
    for t in tensors:
        t = _local(t)
        if t.numel():
            out.add(t.untyped_storage().data_ptr())
    return out


def _reference_state(model, optimizer):
    """The reference's ``{"model/<name>": param, "optim/<name>/momentum_buffer": buffer}``."""
    state = {f"model/{n}": p.detach().clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        buffer = optimizer.state.get(p, {}).get("momentum_buffer")
        if buffer is not None:
            state[f"optim/{n}/momentum_buffer"] = buffer.detach().clone()
    return state


_CPU_ALIAS = known_failures.TorchBug(
    "no upstream issue found",
    "get_model_state_dict/get_optimizer_state_dict with StateDictOptions(cpu_offload=True) "
    "move tensors with Tensor.to('cpu'), which returns the tensor itself when it is already "
    "on CPU: on a CPU host the sharded 'copy' is the live parameters and optimizer state, "
    "and later steps rewrite it (accelerator hosts get a real copy)",
    affected=">=2.10,<2.15",  # measured on 2.10.0, 2.12.1, 2.13.0 and 2.14.1 (CPU)
    devices=("cpu",),
)


# The same cause on one rank: the full tensor of a 1-rank mesh is the local shard, and its
# Tensor.to("cpu") is the live parameter again. Measured on 2.10.0, 2.12.1, 2.13.0 and
# 2.14.1 (CPU, world size 1).
_CPU_ALIAS_FULL_ON_ONE_RANK = known_failures.TorchBug(
    "no upstream issue found",
    "get_model_state_dict/get_optimizer_state_dict with StateDictOptions(cpu_offload=True, "
    "full_state_dict=True) on a 1-rank mesh on CPU: the full tensor is the local shard, and "
    "Tensor.to('cpu') returns it, so the 'copy' is the live state that later steps rewrite",
    affected=">=2.10,<2.15",
    devices=("cpu",),
    world_sizes="1",
)


class StateDictCpuOffloadTest(multirank.MultiRankTestCase, parameterized.TestCase):
    known_failures = {
        "test_offloaded_snapshots_match_reference_per_step_sharded_fsdp2": _CPU_ALIAS,
        "test_offloaded_snapshots_match_reference_per_step_full_fsdp2": _CPU_ALIAS_FULL_ON_ONE_RANK,
    }

    @parameterized.named_parameters(("sharded_fsdp2", SHARDED), ("full_fsdp2", FULL))
    def test_offloaded_snapshots_match_reference_per_step(self, options):
        model = wrapping.wrap_spec(SPEC, "fsdp2")
        optimizer = training.default_optimizer(model.parameters())
        reference = SPEC.build(0).to(self.device)
        ref_optimizer = training.default_optimizer(reference.parameters())
        snapshots, live = [], []
        for step in range(STEPS):
            training.train(model, SPEC, steps=[step], optimizer=optimizer)
            training.reference_train(SPEC, steps=[step], model=reference, optimizer=ref_optimizer)
            snapshots.append(
                (_snapshot(model, optimizer, options), _reference_state(reference, ref_optimizer))
            )
            live.append(_storages(list(model.parameters()) + _optimizer_tensors(optimizer)))

        full = options.full_state_dict
        for step, (copy, expected) in enumerate(snapshots):
            context = f"copy taken after step {step}, checked after step {STEPS - 1}"
            off = {
                n: _local(t).device.type for n, t in copy.items() if _local(t).device.type != "cpu"
            }
            self.assertEmpty(off, f"{context}: not on CPU")
            mine = _storages(copy.values())
            self.assertEmpty(mine & live[step], f"{context}: shares storage with the live state")
            if step:
                previous = _storages(snapshots[step - 1][0].values())
                self.assertEmpty(
                    mine & previous, f"{context}: shares storage with step {step - 1}'s"
                )
            if full and self.rank:
                self.assertEmpty(copy, f"{context}: rank {self.rank} got a full state dict")
            elif full:
                parity.assert_params_close(copy, expected, what="full entry", context=context)
            else:
                local = {n: _local(t) for n, t in copy.items()}
                chunks = {n: t.chunk(self.world_size)[self.rank] for n, t in expected.items()}
                parity.assert_params_close(local, chunks, what="sharded entry", context=context)


def _local(t):
    return t.to_local() if compat.is_dtensor(t) else t


def _optimizer_tensors(optimizer):
    return [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]


if __name__ == "__main__":
    multirank.main()
