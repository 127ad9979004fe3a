"""Counts a training step's collectives per phase and checks them against a table.

    log = collective_count.StepLog()
    with log.recording():
        collective_count.run_step(log, model, inputs, targets, spec.loss_fn, optimizer)
    collective_count.assert_counts(log, {
        "forward": {"all_gather": (4, 3456)},          # (calls, bytes)
        "backward": {"all_gather": 3, "reduce_scatter": (4, 3456)},  # calls only
        # phases and kinds left out are expected to issue nothing
    }, context="api=fsdp2")

Collectives are seen at the dispatcher (:func:`collective_spy.observe_collectives`),
so every call counts whichever Python entry point issued it: torch 2.11 and 2.13
name FSDP's all-gather and reduce-scatter functions differently, and FSDP1 on
gloo gathers into a list. ``bytes`` is the unsharded side of a collective (an
all-gather's output, a reduce-scatter's input, an all-reduce's tensor), so a
unit's all-gather and reduce-scatter both carry that unit's padded size and an
HSDP all-reduce carries the shard's size.

The log also takes marks (:meth:`StepLog.mark`): a test that records, e.g.,
"forward of unit 1" in a hook gets collectives and computation in one ordered
list (:meth:`StepLog.sequence`), which is how prefetch order is checked.
"""

import contextlib
import dataclasses
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from testing.fsdp import collective_spy, compat

FORWARD = "forward"
BACKWARD = "backward"
OPTIMIZER = "optimizer"
# Phase of collectives recorded outside any phase() block.
OUTSIDE = "outside"

# A table entry: a call count, or (call count, summed bytes).
Expected = Union[int, Tuple[int, int]]
ExpectedTable = Mapping[str, Mapping[str, Expected]]


@dataclasses.dataclass(frozen=True)
class Event:
    """One entry of a :class:`StepLog`: a collective or a mark, in issue order.

    Attributes:
      phase: the phase it happened in (``forward``, ``backward``, ... or ``outside``).
      collective: the :class:`collective_spy.Collective`, or None for a mark.
      mark: the mark's label, or None for a collective.
    """

    phase: str
    collective: Optional[collective_spy.Collective] = None
    mark: Optional[str] = None


class StepLog:
    """Ordered record of collectives and marks, each tagged with its phase."""

    def __init__(self):
        self.events: List[Event] = []
        self.current_phase = OUTSIDE

    def _add(self, collective: collective_spy.Collective) -> None:
        self.events.append(Event(self.current_phase, collective=collective))

    @contextlib.contextmanager
    def recording(self) -> Iterator["StepLog"]:
        """Records every collective issued inside the block (this process only)."""
        with collective_spy.observe_collectives(self._add):
            yield self

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Tags what is recorded inside the block with phase ``name``."""
        previous, self.current_phase = self.current_phase, name
        try:
            yield
        finally:
            self.current_phase = previous

    def mark(self, label: str) -> None:
        """Appends a mark (e.g. ``"forward layers.1"``) between the collectives."""
        self.events.append(Event(self.current_phase, mark=label))

    def counts(self, by_group: bool = False) -> Dict[str, Dict[str, Tuple[int, int]]]:
        """``{phase: {kind: (calls, summed bytes)}}`` of the recorded collectives.

        With ``by_group`` the keys are ``"<kind>@<group size>"``, e.g.
        ``"all_reduce@2"``, to tell an HSDP replica all-reduce from a world one.
        """
        table: Dict[str, Dict[str, Tuple[int, int]]] = {}
        for event in self.events:
            c = event.collective
            if c is None:
                continue
            key = f"{c.kind}@{c.group_size}" if by_group else c.kind
            calls, nbytes = table.setdefault(event.phase, {}).get(key, (0, 0))
            table[event.phase][key] = (calls + 1, nbytes + c.bytes)
        return table

    def sequence(
        self,
        name_of: Optional[Callable[[collective_spy.Collective], str]] = None,
        phase: Optional[str] = None,
    ) -> List[str]:
        """Marks and collectives as strings, in order: ``"<kind> <name>"`` or the mark.

        ``name_of(collective)`` names a collective's payload, e.g. the unit whose
        size its bytes match; default ``"<bytes>B"``.
        """
        name_of = name_of or (lambda c: f"{c.bytes}B")
        return [
            e.mark if e.mark is not None else f"{e.collective.kind} {name_of(e.collective)}"
            for e in self.events
            if phase is None or e.phase == phase
        ]

    def describe(self) -> str:
        """One line per event: phase, then the collective (kind, bytes, group size, op) or mark."""
        lines = []
        for event in self.events:
            if event.mark is not None:
                lines.append(f"  {event.phase}: mark {event.mark}")
            else:
                c = event.collective
                lines.append(
                    f"  {event.phase}: {c.kind} {c.bytes} B on a group of "
                    f"{c.group_size} ({c.op}, {c.dtype})"
                )
        return "\n".join(lines) if lines else "  (none)"


def run_step(
    log: StepLog,
    model: nn.Module,
    inputs,
    targets,
    loss_fn,
    optimizer: Optional[torch.optim.Optimizer] = None,
    prefix: str = "",
) -> torch.Tensor:
    """One training step, each part in its phase; returns the loss.

    Phases ``<prefix>forward`` (forward and loss), ``<prefix>backward`` and, if
    ``optimizer`` is given, ``<prefix>optimizer`` (``step()`` and
    ``zero_grad(set_to_none=True)``). Use a prefix such as ``"accumulate_"``
    for micro-batches of gradient accumulation. Records only inside
    :meth:`StepLog.recording`.
    """
    with log.phase(prefix + FORWARD):
        loss = loss_fn(model(inputs), targets)
    with log.phase(prefix + BACKWARD):
        loss.backward()
    if optimizer is not None:
        with log.phase(prefix + OPTIMIZER):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _split(value: Expected) -> Tuple[int, Optional[int]]:
    if isinstance(value, tuple):
        return int(value[0]), int(value[1])
    return int(value), None


def count_mismatches(log: StepLog, expected: ExpectedTable, by_group: bool = False) -> List[str]:
    """Lines naming each (phase, kind) whose calls or bytes differ from ``expected``.

    Phases and kinds absent from ``expected`` must have no collectives. With
    ``by_group``, kinds are ``"<kind>@<group size>"`` (see :meth:`StepLog.counts`).
    """
    observed = log.counts(by_group)
    lines = []
    for phase in list(expected) + [p for p in observed if p not in expected]:
        want_kinds = expected.get(phase, {})
        seen_kinds = observed.get(phase, {})
        for kind in list(want_kinds) + [k for k in seen_kinds if k not in want_kinds]:
            want_calls, want_bytes = _split(want_kinds.get(kind, 0))
            seen_calls, seen_bytes = seen_kinds.get(kind, (0, 0))
            if want_bytes is None and not want_calls:
                want_bytes = 0
            if seen_calls != want_calls or (want_bytes is not None and seen_bytes != want_bytes):
                want = f"{want_calls} calls" + ("" if want_bytes is None else f" / {want_bytes} B")
                lines.append(
                    f"  phase {phase!r}, {kind}: expected {want}, "
                    f"observed {seen_calls} calls / {seen_bytes} B"
                )
    return lines


def assert_counts(
    log: StepLog,
    expected: ExpectedTable,
    *,
    rank: Optional[int] = None,
    context: str = "",
    by_group: bool = False,
) -> None:
    """Asserts the recorded collectives match ``expected`` exactly, per phase and kind.

    Args:
      log: a :class:`StepLog` after recording.
      expected: ``{phase: {kind: calls or (calls, bytes)}}``; every phase and
        kind not listed must have issued nothing.
      rank: named in the message; default this process's rank.
      context: appended to the first line, e.g. ``"api=fsdp1 strategy=NO_SHARD"``.
      by_group: kinds in ``expected`` carry the group size, ``"all_reduce@2"``.

    Raises:
      AssertionError naming the rank, each differing phase and kind with the
      expected and observed calls and bytes, then every recorded event in order.
    """
    lines = count_mismatches(log, expected, by_group)
    if lines:
        rank = compat.rank() if rank is None else rank
        suffix = f" [{context}]" if context else ""
        raise AssertionError(
            f"rank {rank}: collectives differ from the expected table in {len(lines)} "
            f"(phase, kind) entries{suffix}\n"
            + "\n".join(lines)
            + "\nrecorded, in order:\n"
            + log.describe()
        )
