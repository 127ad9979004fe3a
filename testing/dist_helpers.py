"""Small helpers for code running on a rank: barrier, seeding, a shared temporary directory.

To check that ranks hold the same values, see ``testing.fsdp.parity.assert_same_across_ranks``.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

import torch
import torch.distributed as dist


def barrier() -> None:
    """Waits until every rank of the default group reaches this point."""
    dist.barrier()


def seed_per_rank(base: int = 0) -> int:
    """Seeds torch's RNG with a value distinct per rank; returns the seed."""
    seed = base * 1000 + dist.get_rank()
    torch.manual_seed(seed)
    return seed


@contextlib.contextmanager
def shared_tempdir(prefix: str = "tmp-") -> Iterator[str]:
    """A fresh directory under TEST_TMPDIR, the same path on every rank (a collective).

    Rank 0 creates it and broadcasts the path; on exit every rank waits at a
    barrier, then rank 0 removes the directory.
    """
    holder = [
        tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TEST_TMPDIR"))
        if dist.get_rank() == 0
        else None
    ]
    dist.broadcast_object_list(holder, src=0)
    try:
        yield holder[0]
    finally:
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(holder[0], ignore_errors=True)
