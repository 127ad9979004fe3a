"""Helpers for code running on a rank: a shared temporary directory, and process
groups that keep the ranks reusable.

Ranks serve many tests, and the harness fails a test that leaves process groups
behind or destroys one behind its back (testing/rank_state.py). Tests make groups
through these helpers instead of ``dist.new_group``/``dist.destroy_process_group``:

* ``with new_group(ranks) as group:``: a group for the block, destroyed at its end;
* ``destroy_group(group)``: destroys a group the test made;
* ``with pool_owned(): ...``: groups (or device meshes) made in the block live as
  long as the ranks, for caches such as ``testing.fsdp.meshes``;
* ``with torch_made_groups(what): ...``: groups torch makes in the block and keeps
  (FSDP2's post-forward meshes) retire the ranks after the test.

A destroyed group retires the ranks after the test (the next test gets fresh ones):
torch's DTensor caches keep device meshes, which compare equal by their ranks
alone, so a later mesh on the same ranks could pick up the destroyed group
("Could not resolve the process group registered under the name N").

To check that ranks hold the same values, see ``testing.fsdp.parity.assert_same_across_ranks``.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Sequence

import torch.distributed as dist

from testing import rank_state


@contextlib.contextmanager
def shared_tempdir(prefix: str = "tmp-") -> Iterator[str]:
    """A fresh directory under TEST_TMPDIR, the same path on every rank (a collective).

    Rank 0 creates it and broadcasts the path; when the block ends normally every
    rank waits at a barrier, then rank 0 removes the directory. When the block
    raises, the rank leaves at once, without the barrier and leaving the directory
    for inspection: its peers may be in another collective, or never reach the
    barrier, and waiting there would hide the exception behind a hang.
    """
    mine = (
        tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TEST_TMPDIR"))
        if dist.get_rank() == 0
        else None
    )
    path = from_rank0(mine)
    yield path
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)


def from_rank0(obj):
    """Rank 0's ``obj`` (any picklable object) on every rank of the default group.

    A collective (``broadcast_object_list``): every rank calls it with its own ``obj``,
    of which only rank 0's is kept. On one rank it is ``obj``, with no collective.
    """
    if dist.get_world_size() == 1:
        return obj
    holder = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


@contextlib.contextmanager
def new_group(ranks: Sequence[int], **kwargs) -> Iterator[dist.ProcessGroup]:
    """A process group of ``ranks`` for the block (``dist.new_group``'s arguments).

    Every rank of the world must enter it, in the same order (creating a group is
    a collective over the world). Ranks outside ``ranks`` get
    ``dist.GroupMember.NON_GROUP_MEMBER``. When the block ends normally the group
    is destroyed (:func:`destroy_group`); when it raises, the test fails and its
    ranks are replaced anyway, and destroying could wait on peers that never come.
    """
    group = dist.new_group(list(ranks), **kwargs)
    yield group
    destroy_group(group)


def destroy_group(group: dist.ProcessGroup) -> None:
    """Destroys a process group the test made; the ranks are replaced after the test.

    A no-op on ranks outside the group. The default group belongs to the harness:
    destroying it is refused.
    """
    if group is None or group is dist.group.WORLD:
        raise ValueError("destroy_group: the default group belongs to the harness")
    if group == dist.GroupMember.NON_GROUP_MEMBER:
        return
    rank_state.destroy_group(group)


@contextlib.contextmanager
def torch_made_groups(what: str) -> Iterator[None]:
    """Process groups torch makes in the block for its own use are left to it.

    For torch calls that make groups they keep and never destroy (FSDP2's
    ``reshard_after_forward=<int>`` makes a post-forward mesh, new groups, per unit:
    seen on 2.10, 2.12 and 2.13). Such groups are not the test's leak, but they would pile up on
    ranks that serve many tests: the ranks are retired after the test instead.
    ``what`` names the call in the retirement's reason.
    """
    before = rank_state.group_names()
    yield
    after = rank_state.group_names()
    if before is not None and after is not None and after - before:
        rank_state.retire_with(after - before, what)


@contextlib.contextmanager
def pool_owned() -> Iterator[None]:
    """Process groups created in the block may outlive the test: they are the ranks'.

    For groups and device meshes cached for the life of the rank process (and keyed
    by the default group, which a fresh pool replaces). Groups a test makes for its
    own use belong in :func:`new_group`.
    """
    before = rank_state.group_names()
    yield
    after = rank_state.group_names()
    if before is not None and after is not None:
        rank_state.own(after - before)
