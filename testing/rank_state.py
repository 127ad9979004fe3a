"""Process-wide state of a rank: snapshots, the leak check after each test, restores.

Ranks serve many tests (every test of a class; under pytest every class of the
session), so a test that changes process-wide state and leaves it changed makes
later tests depend on the order they run in. The rank server
(testing/rank_server.py) therefore

* takes a :class:`Snapshot` when the rank has joined the group (the baseline)
  and after each class's ``setUpClassOnRanks`` (what that class's tests start
  from);
* resets the RNG states to the class snapshot before every test, so what a test
  draws does not depend on the tests before it (RNG states are never a leak:
  tests draw from them);
* after a test that passed, compares the state with the class snapshot
  (:meth:`Snapshot.leaks`): the default group and its members, the registered
  process groups (which also covers device meshes: a mesh is its groups),
  environment variables, working directory, current and default device,
  default dtype, grad and inference mode, deterministic-algorithm flags. A
  difference fails that test with a message naming what leaked, and its ranks
  are replaced, so the next test starts clean;
* between two classes restores the baseline (environment, working directory,
  dtypes, modes, RNG states).

Process groups a test makes must not outlive it, unless they are meant to live
as long as the ranks: testing/dist_helpers.py has ``new_group`` (a group for a
block, destroyed at its end), ``destroy_group`` and ``pool_owned`` (groups and
meshes cached for the ranks' lifetime). A group destroyed while torch still
holds references to it (DTensor's caches keep device meshes, which compare equal
by ranks alone) breaks later tests on the same ranks, so a destroyed group
always retires the ranks after the test; destroyed outside ``destroy_group``,
it is also a leak.
"""

import os
import random
import re
import sys
from typing import Dict, List, Optional, Set, Tuple

from testing.rank_protocol import RankContext

# Groups the ranks keep on purpose (dist_helpers.pool_owned), by name.
_POOL_OWNED: Set[str] = set()
# Why the ranks must be replaced after the current test (groups destroyed through
# destroy_group), and groups destroyed outside it: reset by begin_test().
_RETIRE: List[str] = []
_DESTROYED_OUTSIDE: List[str] = []
_original_destroy = None
_SECRET = re.compile("KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL")
# Variables torch's compilers write into their own process environment, for their
# kernels or compile workers, not settings a test chose. They are neither leaks nor
# restored away: some are written once per process (behind functools.cache), so
# removing them would change what later compiles use. Checked in the torch
# 2.10-2.14.1 sources; the Triton ones seen on an H200 with torch 2.11.
TORCH_WRITTEN_ENVIRON = {
    "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR": (
        "inductor's C++ kernel loader rewrites it before loading every compiled "
        "kernel library (the address the library reads at import)"
    ),
    "TORCH_WARM_POOL": (
        "inductor sets it to 0 before starting a spawn-based compile worker pool, "
        "so the workers do not start pools of their own"
    ),
    "TORCHINDUCTOR_CACHE_DIR": "inductor writes back the cache directory it resolved",
    "TRITON_CACHE_DIR": "inductor's first Triton kernel sets Triton's cache directory if unset",
    "TRITON_PTXAS_PATH": "inductor points Triton at torch's own ptxas, once per process",
    "TRITON_LIBDEVICE_PATH": "inductor points Triton at CUDA's libdevice for its compile workers",
}


def group_names() -> Optional[Set[str]]:
    """Names of the process groups this rank belongs to, or None if torch hides them."""
    groups = _registered_groups()
    return None if groups is None else set(groups)


def _registered_groups() -> Optional[Dict[str, Tuple[int, ...]]]:
    from testing.fsdp import compat

    return compat.registered_groups()


def own(names) -> None:
    """Marks groups as the ranks' own: they may outlive the test that made them."""
    _POOL_OWNED.update(names)


def retire_with(names, what: str) -> None:
    """Groups torch made for itself: not a leak, but the ranks are retired after the test."""
    _POOL_OWNED.update(names)
    _RETIRE.append(f"{what} made process groups {sorted(names)} that torch keeps")


def destroy_group(group) -> None:
    """Destroys ``group`` and retires the ranks after the current test."""
    import torch.distributed as dist

    name, ranks = group.group_name, dist.get_process_group_ranks(group)
    (_original_destroy or dist.destroy_process_group)(group)
    _POOL_OWNED.discard(name)
    _RETIRE.append(f"the test destroyed process group {name!r} (ranks {list(ranks)})")


def watch_group_destruction() -> None:
    """Notes every ``torch.distributed.destroy_process_group`` call made on this rank.

    torch forgets a destroyed group entirely, while its caches may still refer
    to it; without this wrapper the harness could not tell that a test destroyed
    one. Installed once per rank process, after it joined the group.
    """
    global _original_destroy
    import torch.distributed as dist

    if _original_destroy is not None:
        return
    _original_destroy = dist.destroy_process_group

    def destroy_process_group(group=None):
        what = "the default group" if group is None else f"process group {group.group_name!r}"
        _original_destroy(group)
        _DESTROYED_OUTSIDE.append(what)

    dist.destroy_process_group = destroy_process_group
    dist.distributed_c10d.destroy_process_group = destroy_process_group


def begin_test() -> None:
    """Forgets what the previous test destroyed: called before each test."""
    del _RETIRE[:], _DESTROYED_OUTSIDE[:]


def retire_reasons() -> List[str]:
    """Why the ranks must not serve another test (groups destroyed by this test)."""
    return list(_RETIRE)


class Snapshot:
    """Process-wide state of this rank at one moment (see the module docstring)."""

    def __init__(self, context: RankContext):
        import torch

        self._context = context
        self.facts = _facts(context)
        self.python_rng = random.getstate()
        self.torch_rng = torch.get_rng_state()
        module = _device_module(context)
        self.device_rng = module.get_rng_state() if module is not None else None
        numpy = sys.modules.get("numpy")
        self.numpy_rng = numpy.random.get_state() if numpy is not None else None

    def leaks(self) -> List[str]:
        """What differs now from this snapshot, one line each; empty when nothing."""
        found = [
            f"{what} destroyed outside dist_helpers.destroy_group" for what in _DESTROYED_OUTSIDE
        ]
        now = _facts(self._context)
        for key, before in self.facts.items():
            after = now.get(key)
            if key == "groups":
                found += _group_leaks(before, after)
            elif key == "environ":
                found += _environ_leaks(before, after)
            elif after != before:
                found.append(f"{key} is {after!r} (was {before!r})")
        return found

    def restore_rng(self) -> None:
        """Puts every RNG back to this snapshot's state."""
        import torch

        random.setstate(self.python_rng)
        torch.set_rng_state(self.torch_rng)
        if self.device_rng is not None:
            _device_module(self._context).set_rng_state(self.device_rng)
        numpy = sys.modules.get("numpy")
        if self.numpy_rng is not None and numpy is not None:
            numpy.random.set_state(self.numpy_rng)

    def restore(self) -> None:
        """Restores what can be restored: environment, directory, dtypes, modes, RNGs."""
        import torch

        facts = self.facts
        if dict(os.environ) != facts["environ"]:
            kept = {k: v for k, v in os.environ.items() if k in TORCH_WRITTEN_ENVIRON}
            os.environ.clear()
            os.environ.update(facts["environ"])
            os.environ.update(kept)
        os.chdir(facts["working directory"])
        torch.set_default_dtype(facts["default dtype"])
        # Only when changed: any default device, "cpu" included, installs a torch
        # function mode that every later torch call passes through.
        if _default_device() != facts["default device"]:
            was = facts["default device"]
            torch.set_default_device(None if was == "cpu" else was)
        torch.set_grad_enabled(facts["grad mode"])
        # Only when changed: its first call imports enough of torch to take seconds.
        if _deterministic() != facts["deterministic algorithms"]:
            enabled, warn_only = facts["deterministic algorithms"]
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        self.restore_rng()


def _facts(context: RankContext) -> Dict[str, object]:
    """The compared state, by the name a leak message uses."""
    import torch
    import torch.distributed as dist

    default_group = None
    if dist.is_initialized():
        default_group = (
            id(dist.group.WORLD),
            dist.get_backend(),
            dist.get_rank(),
            dist.get_world_size(),
        )
    facts = {
        "default group (id, backend, rank, size)": default_group,
        "groups": _registered_groups(),
        "environ": dict(os.environ),
        "working directory": os.getcwd(),
        "default dtype": torch.get_default_dtype(),
        "default device": _default_device(),
        "grad mode": torch.is_grad_enabled(),
        "inference mode": torch.is_inference_mode_enabled(),
        "deterministic algorithms": _deterministic(),
    }
    kind = context.device_kind
    if kind.is_accelerator:
        facts["current device"] = kind.torch_module().current_device()
    return facts


def _default_device():
    import torch

    getter = getattr(torch, "get_default_device", None)  # torch >= 2.3
    return str(getter()) if getter is not None else "cpu"


def _deterministic() -> Tuple[bool, bool]:
    import torch

    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )


def _device_module(context: RankContext):
    kind = context.device_kind
    module = kind.torch_module() if kind.is_accelerator else None
    return module if hasattr(module, "get_rng_state") else None


def _group_leaks(before, after) -> List[str]:
    if before is None or after is None:
        return []  # this torch hides its group registry
    found = []
    for name in sorted(set(after) - set(before) - _POOL_OWNED):
        found.append(
            f"process group {name!r} (ranks {list(after[name])}) is still registered: make it "
            "with dist_helpers.new_group (destroyed at the end of its block) or, to keep it "
            "for the ranks' lifetime, inside dist_helpers.pool_owned()"
        )
    retired = " ".join(_RETIRE)
    for name in sorted(set(before) - set(after)):
        if repr(name) not in retired:
            found.append(f"process group {name!r} (ranks {list(before[name])}) is gone")
    return found


def _environ_leaks(before, after) -> List[str]:
    def shown(name, value):
        return "<redacted>" if _SECRET.search(name) else repr(value)

    found = []
    for name in sorted((set(before) | set(after)) - set(TORCH_WRITTEN_ENVIRON)):
        if name not in after:
            found.append(f"environment variable {name} was removed")
        elif name not in before:
            found.append(f"environment variable {name} was set to {shown(name, after[name])}")
        elif before[name] != after[name]:
            found.append(
                f"environment variable {name} is {shown(name, after[name])} "
                f"(was {shown(name, before[name])})"
            )
    return found
