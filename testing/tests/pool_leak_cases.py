"""Test classes that leave process state behind on their ranks, and classes after them.

Run by pool_leak_test.py under pytest, in file order, in one session-wide pool
of 2 ranks. Not a test target of its own. Each class records its ranks' pids,
so the self-test can tell whether the pool was kept or replaced.
"""

import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from testing import dist_helpers, multirank
from testing.fsdp import compat

_ENV_NAME = "POOL_LEAK_CASES_VARIABLE"


def _record_pid(test_name, rank):
    """Appends ``<test> <rank> <pid>`` to a file the self-test reads afterwards."""
    with open(os.path.join(os.environ["CASES_STATE_DIR"], "pids"), "a") as f:
        f.write(f"{test_name} {rank} {os.getpid()}\n")


def _gather_on_subgroup(group, device):
    """FSDP2 on a mesh of ``group``: (full weight gathered from the shards, the unsharded one)."""
    mesh = DeviceMesh.from_group(group, device.type)
    torch.manual_seed(0)
    expected = torch.nn.Linear(4, 4).to(device).weight.detach().clone()
    torch.manual_seed(0)
    layer = compat.fully_shard(torch.nn.Linear(4, 4).to(device), mesh=mesh)
    return layer.weight.full_tensor(), expected


def _gather_in_helper_group(case):
    """Records ``case``'s pid, then checks :func:`_gather_on_subgroup` on a helper-made group."""
    _record_pid(case.id(), case.rank)
    with dist_helpers.new_group(list(range(case.world_size))) as group:
        full, expected = _gather_on_subgroup(group, case.device)
        case.assertTrue(torch.equal(full, expected))


class A1DestroysGroupBehindHarness(multirank.MultiRankTestCase):
    """Destroys its subgroup with dist.destroy_process_group: passes its checks, leaks."""

    def test_destroys_group_directly(self):
        _record_pid(self.id(), self.rank)
        group = dist.new_group(list(range(self.world_size)))
        full, expected = _gather_on_subgroup(group, self.device)
        self.assertTrue(torch.equal(full, expected))
        dist.destroy_process_group(group)


class A2MeshOnSameRanks(multirank.MultiRankTestCase):
    """A new group of the same ranks: works only on ranks that never saw the destroyed one."""

    def test_mesh_on_same_ranks(self):
        _gather_in_helper_group(self)


class B1DestroysGroupThroughHelper(multirank.MultiRankTestCase):
    """The same work with dist_helpers.new_group: passes, and retires its ranks."""

    def test_destroys_group_through_helper(self):
        _gather_in_helper_group(self)


class B2MeshOnSameRanksAgain(A2MeshOnSameRanks):
    """A2's test again, after the helper destroyed a group."""


class C1LeavesGroupAndVariable(multirank.MultiRankTestCase):
    """Leaves a group registered, an environment variable set and float64 as default."""

    def test_leaves_state(self):
        _record_pid(self.id(), self.rank)
        dist.new_group(list(range(self.world_size)))
        os.environ[_ENV_NAME] = "1"
        torch.set_default_dtype(torch.float64)


class C2SeesCleanState(multirank.MultiRankTestCase):
    """Runs after C1: none of its state is left."""

    def test_state_is_clean(self):
        _record_pid(self.id(), self.rank)
        self.assertNotIn(_ENV_NAME, os.environ)
        self.assertEqual(torch.get_default_dtype(), torch.float32)


class D1KeepsPoolOwnedGroup(multirank.MultiRankTestCase):
    """A group made under dist_helpers.pool_owned() may outlive the test."""

    def test_keeps_group(self):
        _record_pid(self.id(), self.rank)
        with dist_helpers.pool_owned():
            dist.new_group(list(range(self.world_size)))


class D2SharesThePool(multirank.MultiRankTestCase):
    """Runs after D1 on the same ranks."""

    def test_same_ranks(self):
        _record_pid(self.id(), self.rank)
        t = torch.ones(1, device=self.device)
        dist.all_reduce(t)
        self.assertEqual(t.item(), self.world_size)


class E1GroupsLeftToTorch(multirank.MultiRankTestCase):
    """Stands for a torch call that makes a group and keeps it (FSDP2's post-forward mesh)."""

    def test_torch_keeps_a_group(self):
        _record_pid(self.id(), self.rank)
        with dist_helpers.torch_made_groups("a torch call"):
            dist.new_group(list(range(self.world_size)))


class E2AfterTorchGroups(D2SharesThePool):
    """Runs after E1."""


class F1TorchWritesEnviron(multirank.MultiRankTestCase):
    """Stands for torch.compile with inductor on CPU, which writes a variable for itself."""

    def test_inductor_side_channel(self):
        _record_pid(self.id(), self.rank)
        os.environ["_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"] = str(id(self))


class F2AfterTorchEnviron(multirank.MultiRankTestCase):
    """Runs after F1 on the same ranks, which still have the variable torch wrote."""

    def test_variable_is_kept(self):
        _record_pid(self.id(), self.rank)
        self.assertIn("_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR", os.environ)


if __name__ == "__main__":
    multirank.main()
