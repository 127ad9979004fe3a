"""Records the collectives that FSDP issues.

Two spies, at two levels:

* :func:`record_reductions` watches the ``torch.distributed.<name>`` Python
  functions that reduce gradients and records ``(name, input dtype)``:

      with collective_spy.record_reductions() as calls:
          loss.backward()
      # calls == [("reduce_scatter_tensor", torch.bfloat16), ...]

* :func:`observe_collectives` watches the dispatcher's collective ops
  (``c10d.*`` and functional collectives), below every Python entry point, so it
  sees each collective whatever function name a torch release calls it by
  (``all_gather_into_tensor`` or ``all_gather_single``, ``reduce_scatter_tensor``
  or ``reduce_scatter_single``, list or tensor forms, DTensor redistributions):

      events = []
      with collective_spy.observe_collectives(events.append):
          loss.backward()
      # events == [Collective(kind="all_gather", op="c10d._allgather_base_",
      #                       bytes=576, group_size=2, dtype=torch.float32), ...]

Both record in this process only and pass every call on unchanged.
"""

import contextlib
import dataclasses
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from testing.fsdp import compat

# Names under which torch releases expose reduce-scatter.
REDUCE_SCATTERS = ("reduce_scatter_tensor", "reduce_scatter_single", "reduce_scatter")
# Every collective that can reduce gradients.
GRADIENT_REDUCTIONS = REDUCE_SCATTERS + ("all_reduce",)

# name -> (position, keyword names) of the argument holding the data reduced.
_INPUT_ARG = {"all_reduce": (0, ("tensor",))}
_DEFAULT_INPUT_ARG = (1, ("input", "input_list"))


def _input_dtype(name: str, args, kwargs) -> Optional[torch.dtype]:
    """dtype of the data a collective call reduces (first tensor of a list), or None."""
    position, keywords = _INPUT_ARG.get(name, _DEFAULT_INPUT_ARG)
    value = (
        args[position]
        if len(args) > position
        else next((kwargs[k] for k in keywords if k in kwargs), None)
    )
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value.dtype if isinstance(value, torch.Tensor) else None


@contextlib.contextmanager
def record_reductions(
    names: Sequence[str] = REDUCE_SCATTERS,
) -> Iterator[List[Tuple[str, Optional[torch.dtype]]]]:
    """Yields a list that gets ``(collective name, input dtype)`` for every call inside.

    Args:
      names: ``torch.distributed`` functions to watch (those this torch lacks are
        skipped); default the reduce-scatters, ``GRADIENT_REDUCTIONS`` adds all_reduce.
    """
    calls: List[Tuple[str, Optional[torch.dtype]]] = []
    originals = {n: getattr(dist, n) for n in names if hasattr(dist, n)}

    def recorder(name, fn):
        def call(*args, **kwargs):
            calls.append((name, _input_dtype(name, args, kwargs)))
            return fn(*args, **kwargs)

        return call

    for name, fn in originals.items():
        setattr(dist, name, recorder(name, fn))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


# Collective kinds, from the dispatcher op name with underscores removed.
ALL_GATHER = "all_gather"
REDUCE_SCATTER = "reduce_scatter"
ALL_REDUCE = "all_reduce"
BROADCAST = "broadcast"
KINDS = (
    ALL_GATHER,
    REDUCE_SCATTER,
    ALL_REDUCE,
    BROADCAST,
    "all_to_all",
    "barrier",
    "send_recv",
    "other",
)
_KIND_PATTERNS = (
    ("allgather", ALL_GATHER),
    ("reducescatter", REDUCE_SCATTER),
    ("allreduce", ALL_REDUCE),
    ("broadcast", BROADCAST),
    ("alltoall", "all_to_all"),
    ("barrier", "barrier"),
    ("send", "send_recv"),
    ("recv", "send_recv"),
)
# Dispatcher namespaces of collectives: c10d (ProcessGroup calls, what
# torch.distributed's functions reach) and the functional collectives.
_COLLECTIVE_NAMESPACES = ("c10d", "_c10d_functional", "c10d_functional")
# Ops in those namespaces that complete or describe a collective rather than issue one.
_NOT_COLLECTIVES = ("wait", "work", "_register", "_unregister", "_resolve")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective seen at the dispatcher.

    Attributes:
      kind: ``all_gather``, ``reduce_scatter``, ``all_reduce``, ``broadcast``,
        ``all_to_all``, ``barrier``, ``send_recv`` or ``other``.
      op: the dispatcher op, e.g. ``c10d._allgather_base_``.
      bytes: bytes of the unsharded side: an all-gather's output, a
        reduce-scatter's input, an all-reduce's tensor (the larger of the summed
        output-side and input-side tensors).
      group_size: size of the process group it ran on (0 if not found).
      dtype: dtype of the first tensor involved, or None.
    """

    kind: str
    op: str
    bytes: int
    group_size: int
    dtype: Optional[torch.dtype]


def collective_kind(op_name: str) -> str:
    """The :data:`KINDS` entry for a dispatcher op name such as ``c10d.allgather_``."""
    flat = op_name.rsplit(".", 1)[-1].replace("_", "").lower()
    for pattern, kind in _KIND_PATTERNS:
        if pattern in flat:
            return kind
    return "other"


def _tensors(value) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _group_size(args, kwargs) -> int:
    for value in list(args) + list(kwargs.values()):
        size = compat.dispatched_group_size(value)
        if size:
            return size
    return 0


def _describe(func, args, kwargs) -> Optional[Collective]:
    namespace = getattr(func, "namespace", "")
    if namespace not in _COLLECTIVE_NAMESPACES:
        return None
    name = f"{namespace}.{func._overloadpacket.__name__}"
    if any(word in name.rsplit(".", 1)[-1] for word in _NOT_COLLECTIVES):
        return None
    sides = [_tensors(args[0]) if args else [], _tensors(args[1]) if len(args) > 1 else []]
    nbytes = max(sum(t.numel() * t.element_size() for t in side) for side in sides)
    first = next((t for side in sides for t in side), None)
    return Collective(
        kind=collective_kind(name),
        op=name,
        bytes=nbytes,
        group_size=_group_size(args, kwargs),
        dtype=first.dtype if first is not None else None,
    )


class _CollectiveMode(compat.TorchDispatchMode):
    """Dispatch mode that reports each collective op to ``sink`` before running it."""

    def __init__(self, sink: Callable[[Collective], None]):
        super().__init__()
        self._sink = sink

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """True: torch.compile'd code still compiles and runs compiled while recording.

        Without it, dynamo falls back to eager for a frame first run under a dispatch
        mode, and on torch 2.13 keeps that code object eager for good
        (pytorch#190286). With it (a TorchDispatchMode hook, pytorch#161648; present
        in 2.13 and 2.14, releases without it never call it), the mode is off while
        dynamo compiles and on while the compiled code runs, so FSDP's collectives
        around it are still seen.
        """
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Let tensor subclasses (DTensor) run first and come back as plain
        # tensors, so the collectives a redistribution issues are seen too.
        if compat.DTensor is not None and any(issubclass(t, compat.DTensor) for t in types):
            return NotImplemented
        event = _describe(func, args, kwargs)
        if event is not None:
            self._sink(event)
        return func(*args, **kwargs)


@contextlib.contextmanager
def observe_collectives(sink: Callable[[Collective], None]) -> Iterator[None]:
    """Calls ``sink(Collective)`` for every collective op dispatched inside the block.

    Covers backward hooks and the autograd engine's threads too (torch carries the
    dispatch mode into them). ``collective_count.StepLog`` records them by phase.
    """
    with _CollectiveMode(sink):
        yield
