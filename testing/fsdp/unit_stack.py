"""A stack of equal FSDP units for memory tests, with its wrapping and sizes.

N_UNITS units of ``Linear(DIM, DIM) + Tanh``, each wrapped as its own FSDP unit;
the root holds no parameters. ``unit_bytes(world_size, api)`` is U, the bytes of one
unit's unsharded (padded) float32 parameters, so the full model is N_UNITS * U.
"""

import torch
from torch import nn

from testing.fsdp import rank_device, wrapping

N_UNITS = 8
DIM = 256  # DIM and DIM * DIM + DIM divide by 2, 4 and 8: no padding at those world sizes
UNITS = tuple(f"layers.{i}" for i in range(N_UNITS))


class UnitStack(nn.Module):
    """N_UNITS units of Linear(DIM, DIM) + Tanh; no parameters outside the units."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            *[nn.Sequential(nn.Linear(DIM, DIM), nn.Tanh()) for _ in range(N_UNITS)]
        )

    def forward(self, x):
        """Runs the stacked units in order."""
        return self.layers(x)


def build() -> UnitStack:
    """The stack on CPU from seed 0, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UnitStack()


def wrap(api: str, reshard: bool, device=None) -> nn.Module:
    """Shards a fresh stack, each unit separately, resharding after forward or not.

    FSDP1: FULL_SHARD (``reshard``) or SHARD_GRAD_OP; FSDP2: ``reshard_after_forward``.
    ``device`` goes to ``wrapping.wrap`` (default the rank's device).
    """
    if api == "fsdp1":
        options = {"sharding_strategy": "FULL_SHARD" if reshard else "SHARD_GRAD_OP"}
    else:
        options = {"reshard_after_forward": reshard}
    return wrapping.wrap(build(), api, UNITS, device=device, **options)


def unit_bytes(world_size: int, api: str) -> int:
    """U: bytes of one unit's unsharded float32 parameters, padded as ``api`` pads them.

    FSDP1 pads a unit's flat parameter to a multiple of ``world_size`` elements;
    FSDP2 pads each parameter's dim 0 to a multiple of ``world_size`` rows (at
    world size 3: 265224 bytes against FSDP1's 263172).
    """
    weight, bias = DIM * DIM, DIM
    if api == "fsdp1":
        return -(-(weight + bias) // world_size) * world_size * 4
    rows = -(-DIM // world_size) * world_size
    return (rows * DIM + rows) * 4


def inputs(rank: int, device=None) -> torch.Tensor:
    """A rank-distinct batch of 2 inputs on ``device`` (default the rank's device)."""
    gen = torch.Generator().manual_seed(1000 + rank)
    return torch.randn(2, DIM, generator=gen).to(rank_device.resolve(device))
