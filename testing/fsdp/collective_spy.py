"""Records the gradient-reducing collectives that FSDP calls, with their dtypes.

    with collective_spy.record_reductions() as calls:
        loss.backward()
    # calls == [("reduce_scatter_tensor", torch.bfloat16), ...]

FSDP1 and FSDP2 call collectives as ``torch.distributed.<name>``; the spy
replaces those attributes for the duration of the block (in this process only)
and records each call before passing it on unchanged.
"""

import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

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
    value = args[position] if len(args) > position else next(
        (kwargs[k] for k in keywords if k in kwargs), None)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value.dtype if isinstance(value, torch.Tensor) else None


@contextlib.contextmanager
def record_reductions(names: Sequence[str] = REDUCE_SCATTERS
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
