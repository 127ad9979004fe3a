"""Small helpers for code running on a rank: barrier, seeding, cross-rank checks."""

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
    holder = [tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TEST_TMPDIR"))
              if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    try:
        yield holder[0]
    finally:
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(holder[0], ignore_errors=True)


def assert_same_across_ranks(tensor: torch.Tensor, name: str = "tensor",
                             atol: float = 0.0, rtol: float = 0.0) -> None:
    """Fails on every rank unless ``tensor`` is equal (within tolerance) on all.

    The message names each differing rank, the largest difference and where.
    """
    world = dist.get_world_size()
    shapes = [None] * world
    dist.all_gather_object(shapes, (tuple(tensor.shape), str(tensor.dtype)))
    if len(set(shapes)) != 1:
        raise AssertionError(f"{name} differs in shape/dtype across ranks: "
                             + ", ".join(f"rank {r}: {s}" for r, s in enumerate(shapes)))
    gathered = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(gathered, tensor.contiguous())
    reference = gathered[0].detach().double().cpu()
    problems = []
    for r in range(1, world):
        other = gathered[r].detach().double().cpu()
        diff = (other - reference).abs()
        allowed = atol + rtol * reference.abs()
        if bool((diff > allowed).any()):
            index = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
            problems.append(
                f"rank {r} vs rank 0: max abs diff {diff.max().item():.6g} at "
                f"{index} ({other[index].item():.6g} vs {reference[index].item():.6g})")
    if problems:
        raise AssertionError(f"{name} differs across ranks (shape "
                             f"{tuple(tensor.shape)}):\n  " + "\n  ".join(problems))
