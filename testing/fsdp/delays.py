"""Delay injection: make the collective side slow so missing stream waits show.

FSDP overlaps communication with computation by running collectives on their own
streams and making the compute stream wait on events. If a wait is missing, the
compute reads a buffer before the all-gather has filled it (or the optimizer
reads a gradient before the reduce-scatter has written it); with fast
collectives that usually passes by luck. These helpers delay the collective side
so such a race loses:

    with delays.delay_collectives(("all_gather",)) as injected:  # on the rank's device
        training.check_against_reference(...)
    assert injected  # a delay ran before every all-gather

* :func:`delay_collectives` runs :func:`delay` right before each collective of
  the given kinds is issued, seen at the dispatcher (the same interception as
  :func:`collective_spy.observe_collectives`), so on an accelerator the delay
  is enqueued on the stream current at that moment: FSDP's communication stream,
  which the collective then waits for.
* :func:`delay_optimizer_step` runs :func:`delay` before each ``optimizer.step()``
  (a public step pre-hook), on the current stream.
* :func:`delay` itself: on CUDA a kernel that spins ``cycles`` clock cycles
  (``torch.cuda._sleep``, isolated in ``compat.device_sleep``); on other
  accelerators, or without it, a chain of matrix products on the current stream
  (public fallback); on CPU, where gloo collectives are synchronous and there are
  no streams to race, ``time.sleep(cpu_seconds)``: the delayed tests then run as
  plain parity checks.
"""

import contextlib
import time
from typing import Iterator, List, Sequence

import torch

from testing.fsdp import collective_spy, compat, rank_device

# About 10 ms on a current data-center GPU (1-2 GHz): long against a small
# model's collectives, short enough for a few dozen per test.
DEFAULT_CYCLES = 20_000_000
# Matrix products of the fallback (no sleep kernel): each 512^3 multiply-adds.
FALLBACK_MATMULS = 200
FALLBACK_SIZE = 512
# On CPU there are no streams to race: keep the host sleep short.
DEFAULT_CPU_SECONDS = 0.001

# Delay points, as the kinds of collectives they precede.
BEFORE_ALL_GATHER = (collective_spy.ALL_GATHER,)
# Gradient reductions: reduce-scatter, and the all-reduce of NO_SHARD and of
# the HSDP replica group.
BEFORE_REDUCE = (collective_spy.REDUCE_SCATTER, collective_spy.ALL_REDUCE)


def delay(
    device=None, *, cycles: int = DEFAULT_CYCLES, cpu_seconds: float = DEFAULT_CPU_SECONDS
) -> str:
    """Delays what comes next on ``device``'s current stream; returns how.

    Returns ``"device_sleep"`` (CUDA spin kernel), ``"matmul"`` (public
    fallback on an accelerator) or ``"host_sleep"`` (CPU). ``device`` defaults to
    the rank's device.
    """
    device = rank_device.resolve(device)
    if device.type == "cpu":
        time.sleep(cpu_seconds)
        return "host_sleep"
    if compat.device_sleep(device, cycles):
        return "device_sleep"
    # Scaled to stay finite; the result is discarded, only the stream time matters.
    a = torch.full((FALLBACK_SIZE, FALLBACK_SIZE), 1.0 / FALLBACK_SIZE, device=device)
    out = torch.empty_like(a)
    for _ in range(FALLBACK_MATMULS):
        torch.mm(a, a, out=out)
    return "matmul"


@contextlib.contextmanager
def delay_collectives(
    kinds: Sequence[str],
    device=None,
    *,
    cycles: int = DEFAULT_CYCLES,
    cpu_seconds: float = DEFAULT_CPU_SECONDS,
) -> Iterator[List[str]]:
    """Runs :func:`delay` before every collective of ``kinds`` issued inside the block.

    Args:
      kinds: collective kinds (``collective_spy.KINDS``), e.g. :data:`BEFORE_ALL_GATHER`.
      device: the device to delay (default the rank's device).
      cycles, cpu_seconds: passed to :func:`delay`.

    Yields:
      A list that gets ``"<kind>: <how>"`` per injected delay, so a test can
      assert that delays actually ran.
    """
    kinds = tuple(kinds)
    device = rank_device.resolve(device)
    unknown = [k for k in kinds if k not in collective_spy.KINDS]
    if unknown:
        raise ValueError(f"unknown collective kinds {unknown}; use {collective_spy.KINDS}")
    injected: List[str] = []

    def before(collective: collective_spy.Collective) -> None:
        if collective.kind in kinds:
            how = delay(device, cycles=cycles, cpu_seconds=cpu_seconds)
            injected.append(f"{collective.kind}: {how}")

    with collective_spy.observe_collectives(before):
        yield injected


@contextlib.contextmanager
def delay_optimizer_step(
    optimizer: torch.optim.Optimizer,
    device=None,
    *,
    cycles: int = DEFAULT_CYCLES,
    cpu_seconds: float = DEFAULT_CPU_SECONDS,
) -> Iterator[List[str]]:
    """Runs :func:`delay` before every ``optimizer.step()`` inside the block.

    Yields a list that gets ``"optimizer: <how>"`` per injected delay. ``device``
    defaults to the rank's device.
    """
    device = rank_device.resolve(device)
    injected: List[str] = []

    def before(opt, args, kwargs):
        injected.append(f"optimizer: {delay(device, cycles=cycles, cpu_seconds=cpu_seconds)}")

    handle = optimizer.register_step_pre_hook(before)
    try:
        yield injected
    finally:
        handle.remove()
