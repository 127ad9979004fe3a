"""Parity assertions whose failures say what diverged, where and by how much.

    parity.assert_params_close(params.full_params(fsdp_model),
                               params.full_params(ref_model), rank=self.rank)

fails with e.g.::

    rank 1: 2 of 8 parameters differ (float32: rtol=1e-05, atol=1e-05)
      layers.0.fc1.weight: max abs diff 4.1e-02, max rel diff 3.7e-01; 128/256 elements
        out of tolerance; worst at (3, 1): actual 0.1234 vs expected 0.0823
      ...

Every mismatching entry is listed, as are names missing on either side and
shape mismatches.  Tolerances come from the dtype of the run (pass
``dtype=torch.bfloat16`` for a bf16 mixed-precision run compared with an fp32
reference) unless ``rtol``/``atol`` are given.
"""

import contextlib
import dataclasses
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from testing import dist_helpers
from testing.fsdp import compat

# dtype -> (rtol, atol).  float32 is tight: FSDP and the reference differ only
# in reduction order.  Low-precision entries assume an fp32 reference and a
# few optimizer steps.
TOLERANCES: Dict[torch.dtype, Tuple[float, float]] = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (5e-3, 5e-3),
}

TensorTree = Union[
    torch.Tensor, Mapping[str, Optional[torch.Tensor]], Sequence[Optional[torch.Tensor]], None
]


def tolerance(dtype: torch.dtype) -> Tuple[float, float]:
    """``(rtol, atol)`` for comparing results computed in ``dtype``."""
    if dtype in TOLERANCES:
        return TOLERANCES[dtype]
    if not dtype.is_floating_point:
        return 0.0, 0.0
    return TOLERANCES[torch.float32]


@dataclasses.dataclass
class Diff:
    """How far ``actual`` is from ``expected`` for one tensor."""

    name: str
    max_abs: float
    max_rel: float
    num_bad: int
    numel: int
    worst_index: Tuple[int, ...]
    worst_actual: float
    worst_expected: float

    def describe(self) -> str:
        """One human-readable line (plus continuation) for failure messages."""
        idx = tuple(self.worst_index)
        return (
            f"{self.name}: max abs diff {self.max_abs:.3e}, max rel diff {self.max_rel:.3e}; "
            f"{self.num_bad}/{self.numel} elements out of tolerance; worst at {idx}: "
            f"actual {self.worst_actual:.6g} vs expected {self.worst_expected:.6g}"
        )


def diff(name: str, actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> Diff:
    """Elementwise comparison ``|a - e| <= atol + rtol * |e|`` (NaNs must match)."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    abs_diff = (a - e).abs()
    both_nan = a.isnan() & e.isnan()
    abs_diff = torch.where(both_nan, torch.zeros_like(abs_diff), abs_diff)
    abs_diff = torch.where(abs_diff.isnan(), torch.full_like(abs_diff, float("inf")), abs_diff)
    # Relative to an expected 0 any difference is infinitely large: say "inf",
    # not a number near float64's maximum.
    rel_diff = torch.where(e == 0, torch.full_like(abs_diff, float("inf")), abs_diff / e.abs())
    rel_diff = torch.where(abs_diff == 0, torch.zeros_like(rel_diff), rel_diff)
    bad = abs_diff > atol + rtol * e.abs()
    # Worst element: the one furthest outside tolerance (largest abs diff if none is).
    excess = abs_diff - (atol + rtol * e.abs())
    flat = int(excess.reshape(-1).argmax()) if a.numel() else 0
    # Empty tensors (a rank's empty shard) have no element to point at.
    index = tuple(torch.unravel_index(torch.tensor(flat), a.shape)) if a.dim() and a.numel() else ()
    return Diff(
        name=name,
        max_abs=float(abs_diff.max()) if a.numel() else 0.0,
        max_rel=float(rel_diff.max()) if a.numel() else 0.0,
        num_bad=int(bad.sum()),
        numel=a.numel(),
        worst_index=tuple(int(i) for i in index),
        worst_actual=float(a.reshape(-1)[flat]) if a.numel() else 0.0,
        worst_expected=float(e.reshape(-1)[flat]) if a.numel() else 0.0,
    )


def _current_rank(rank: Optional[int]) -> int:
    return compat.rank() if rank is None else rank


def _as_dict(tree: TensorTree, name: str) -> Dict[str, Optional[torch.Tensor]]:
    if tree is None or isinstance(tree, torch.Tensor):
        return {name: tree}
    if isinstance(tree, Mapping):
        return dict(tree)
    return {f"{name}[{i}]": t for i, t in enumerate(tree)}


def _check(
    actual: Mapping[str, Optional[torch.Tensor]],
    expected: Mapping[str, Optional[torch.Tensor]],
    *,
    what: str,
    rank: Optional[int],
    dtype: Optional[torch.dtype],
    rtol: Optional[float],
    atol: Optional[float],
    context: str,
) -> None:
    problems: List[str] = []
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    if missing:
        problems.append(f"missing from actual: {missing}")
    if unexpected:
        problems.append(f"not in expected: {unexpected}")
    num_bad = 0
    tol_desc = set()
    for name in (k for k in expected if k in actual):
        a, e = actual[name], expected[name]
        if a is None or e is None:
            if (a is None) != (e is None):
                num_bad += 1
                problems.append(
                    f"{name}: actual is {'None' if a is None else 'a tensor'}, "
                    f"expected is {'None' if e is None else 'a tensor'}"
                )
            continue
        if tuple(a.shape) != tuple(e.shape):
            num_bad += 1
            problems.append(f"{name}: shape {tuple(a.shape)} != expected {tuple(e.shape)}")
            continue
        run_dtype = dtype or (a.dtype if a.dtype.itemsize <= e.dtype.itemsize else e.dtype)
        d_rtol, d_atol = tolerance(run_dtype)
        r = d_rtol if rtol is None else rtol
        t = d_atol if atol is None else atol
        tol_desc.add(f"{str(run_dtype).replace('torch.', '')}: rtol={r:g}, atol={t:g}")
        d = diff(name, a, e, r, t)
        if d.num_bad:
            num_bad += 1
            problems.append(d.describe())
    if problems:
        plural = what + ("es" if what.endswith("s") else "s")
        header = (
            f"rank {_current_rank(rank)}: {num_bad} of {len(expected)} {plural} differ"
            f" ({'; '.join(sorted(tol_desc)) or 'no tolerances applied'})"
        )
        if context:
            header += f" [{context}]"
        raise AssertionError(header + "\n" + "\n".join("  " + p for p in problems))


def assert_params_close(
    actual: Mapping[str, Optional[torch.Tensor]],
    expected: Mapping[str, Optional[torch.Tensor]],
    *,
    rank: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    what: str = "parameter",
    context: str = "",
) -> None:
    """Asserts two ``{name: tensor}`` dicts match within dtype tolerances.

    Args:
      actual, expected: e.g. ``full_params(fsdp_model)`` and
        ``full_params(reference_model)``; ``None`` values (missing grads)
        must match ``None``.
      rank: shown in the message; default: this process's rank.
      dtype: dtype whose tolerances apply (the run's compute dtype); default:
        the lower-precision dtype of each pair.
      rtol, atol: override the dtype tolerances.
      what: noun for the message ("parameter", "gradient", "buffer").
      context: appended to the header, e.g. ``"api=fsdp2 step=3"``.

    Raises:
      AssertionError listing every mismatching name with max abs/rel diff.
    """
    _check(
        actual, expected, what=what, rank=rank, dtype=dtype, rtol=rtol, atol=atol, context=context
    )


def assert_unchanged(
    after: Mapping[str, Optional[torch.Tensor]],
    before: Mapping[str, Optional[torch.Tensor]],
    names: Iterable[str],
    *,
    context: str = "",
) -> None:
    """Asserts the ``names`` entries of ``after`` equal ``before``'s bit for bit.

    For parameters a step must not move (frozen, ignored or unused ones).
    """
    names = list(names)
    assert_params_close(
        {n: after[n] for n in names},
        {n: before[n] for n in names},
        rtol=0,
        atol=0,
        context=context,
    )


def assert_tensors_close(
    actual: TensorTree,
    expected: TensorTree,
    *,
    name: str = "output",
    rank: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    context: str = "",
) -> None:
    """Like :func:`assert_params_close`, for a tensor, list or dict of tensors (outputs, losses)."""
    if isinstance(actual, (int, float)):
        actual = torch.tensor(actual, dtype=torch.float64)
    if isinstance(expected, (int, float)):
        expected = torch.tensor(expected, dtype=torch.float64)
    if isinstance(actual, Sequence) and actual and isinstance(actual[0], (int, float)):
        actual = torch.tensor(actual, dtype=torch.float64)
    if isinstance(expected, Sequence) and expected and isinstance(expected[0], (int, float)):
        expected = torch.tensor(expected, dtype=torch.float64)
    if dtype is None and rtol is None and atol is None:
        if isinstance(actual, torch.Tensor) and actual.dtype == torch.float64:
            dtype = torch.float32  # Python floats (e.g. losses) computed in fp32.
    got, want = _as_dict(actual, name), _as_dict(expected, name)
    _check(got, want, what=name, rank=rank, dtype=dtype, rtol=rtol, atol=atol, context=context)


def assert_same_across_ranks(
    tensors: TensorTree,
    *,
    name: str = "tensor",
    rank: Optional[int] = None,
    rtol: float = 0.0,
    atol: float = 0.0,
    context: str = "",
) -> None:
    """Asserts every rank holds rank 0's values and dtypes (a collective; default exact).

    ``tensors`` is a tensor, list or ``{name: tensor}`` dict, on any device. Each
    rank compares its CPU copy with rank 0's; a mismatch fails on the ranks that
    differ, e.g.::

        rank 1: 1 of 1 tensors differ (float32: rtol=0, atol=0) [weights vs rank 0]
          weights: max abs diff 5.000e-01, ...; worst at (1, 2): actual 0.5 vs expected 0
    """
    local = {
        k: (None if v is None else v.detach().to("cpu")) for k, v in _as_dict(tensors, name).items()
    }
    expected = dist_helpers.from_rank0(local)
    where = f"{name} vs rank 0" + (f"; {context}" if context else "")
    dtypes = [
        f"{k}: dtype {local[k].dtype} != rank 0's {expected[k].dtype}"
        for k in expected
        if local.get(k) is not None
        and expected[k] is not None
        and local[k].dtype != expected[k].dtype
    ]
    if dtypes:
        raise AssertionError(
            f"rank {_current_rank(rank)}: {len(dtypes)} of {len(expected)} "
            f"tensors differ in dtype [{where}]\n" + "\n".join("  " + d for d in dtypes)
        )
    _check(
        local, expected, what="tensor", rank=rank, dtype=None, rtol=rtol, atol=atol, context=where
    )


class DeferredFailures:
    """Collects assertion failures of several checks and raises them together at the end.

    A loop that runs collectives (training, ``params.full_params``, a forward)
    between checks must not stop on one rank while the others go on: they would
    wait for it in the next collective and fail as hung. With ::

        failures = parity.DeferredFailures()
        for shape in shapes:
            ...  # collectives
            with failures.check(f"mesh {shape}"):
                parity.assert_params_close(...)
        failures.raise_if_any()

    every rank runs every iteration, and each failing rank then raises one
    ``AssertionError`` holding every failed check's message, labelled.
    """

    def __init__(self) -> None:
        self.messages: List[str] = []

    @contextlib.contextmanager
    def check(self, label: str) -> Iterator[None]:
        """Runs the block; an ``AssertionError`` in it is recorded under ``label``."""
        try:
            yield
        except AssertionError as error:
            self.messages.append(f"[{label}] {error}")

    def raise_if_any(self) -> None:
        """Raises one ``AssertionError`` with every recorded message, if any."""
        if self.messages:
            raise AssertionError(
                f"{len(self.messages)} failed check(s):\n" + "\n".join(self.messages)
            )
