"""Helpers for code running on a rank: a temporary directory all ranks share.

To check that ranks hold the same values, see ``testing.fsdp.parity.assert_same_across_ranks``.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

import torch.distributed as dist


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
