"""The device of the rank this process runs: what testing/fsdp helpers use by default.

The multi-rank harness records it when a rank process starts
(``testing/rank_server.py``: ``<kind>:<rank>`` after ``set_device(rank)`` on an
accelerator, ``cpu`` on CPU), so a helper called without ``device`` works on the
same device as the test's ``self.device``. Outside a rank nothing is recorded and
:func:`rank_device` raises rather than guess: a guess such as "CUDA if available,
else CPU" would silently run HPU or XPU tests on CPU.
"""

from typing import Optional, Union

import torch

_recorded: Optional[torch.device] = None


def record(device: Union[torch.device, str]) -> None:
    """Makes ``device`` this process's rank device (the harness calls it once per rank)."""
    global _recorded
    _recorded = torch.device(device)


def rank_device() -> torch.device:
    """This rank's device, as the harness recorded it; raises ``RuntimeError`` outside a rank."""
    if _recorded is None:
        raise RuntimeError(
            "no rank device recorded in this process: testing/fsdp helpers default to the "
            "device of the rank they run on, which exists only inside a "
            "multirank.MultiRankTestCase test method; outside one, pass device= explicitly "
            "(e.g. device='cpu')"
        )
    return _recorded


def resolve(device: Optional[Union[torch.device, str]] = None) -> torch.device:
    """``device`` as a ``torch.device`` when given, else :func:`rank_device`."""
    return torch.device(device) if device is not None else rank_device()
