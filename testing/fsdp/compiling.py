"""torch.compile over FSDP2: compile a sharded model two ways, record graphs, compare with eager.

The model is :data:`tp_models.SPEC` without tensor parallelism: ``fully_shard`` on
each block and the root, as :func:`wrapping.wrap_spec` does. :func:`compile_model`
then compiles it

* ``per_block``: each block in place (``nn.Module.compile``): FSDP2's hooks stay
  in eager around the block's compiled forward;
* ``whole_model``: ``torch.compile(model)``: dynamo runs FSDP2's hooks (marked
  ``torch._dynamo.disable``) in eager and compiles the code between them.

A :class:`GraphRecorder` backend records the operators of every graph dynamo
hands it, then compiles the graph with the real backend. :func:`split_blocks`
finds graphs that hold part of a block: a graph break inside one.

:func:`run_recorded` trains step by step and records each step's collectives per
phase (``collective_count``), so a compiled run is checked against eager for
parity and for the collectives it issues.
"""

import collections
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from torch import nn

from testing.fsdp import (
    collective_count,
    compat,
    data,
    params,
    parity,
    rank_device,
    tp_models,
    training,
    wrapping,
)

MODES = ("per_block", "whole_model")
SPEC = tp_models.SPEC

# Operators of one TpBlock's forward: six projections, two norms, one attention.
# The root adds at most one of each of a linear (head) and a layer_norm (final norm).
_BLOCK_OPS = {"linear": 6, "layer_norm": 2, "scaled_dot_product_attention": 1}
_ROOT_EXTRA = {"linear": 1, "layer_norm": 1}


class GraphRecorder:
    """A ``torch.compile`` backend that records each graph's operator counts.

    ``GraphRecorder("aot_eager")`` hands every graph to the named backend
    afterwards. ``graphs`` holds one ``{operator name: count}`` per compiled graph.
    """

    def __init__(self, backend: str):
        self.backend = backend
        self.graphs: List[Dict[str, int]] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        """Records ``gm``'s operator counts, then compiles it with the named backend."""
        counts = collections.Counter(
            getattr(node.target, "__name__", str(node.target))
            for node in gm.graph.nodes
            if node.op in ("call_function", "call_method")
        )
        self.graphs.append(dict(counts))
        return compat.lookup_backend(self.backend)(gm, example_inputs)


def split_blocks(graphs: List[Dict[str, int]]) -> List[str]:
    """One line per graph that holds part of a block (a graph break inside it).

    A graph may hold whole blocks (``k`` attentions, ``6 k`` projections, ``2 k``
    norms) plus the root's head and final norm; any other mix of a block's
    operators means the block was cut.
    """
    lines = []
    for index, ops in enumerate(graphs):
        blocks = ops.get("scaled_dot_product_attention", 0)
        for op, per_block in _BLOCK_OPS.items():
            extra = ops.get(op, 0) - blocks * per_block
            if not 0 <= extra <= _ROOT_EXTRA.get(op, 0):
                relevant = {k: v for k, v in ops.items() if k in _BLOCK_OPS}
                lines.append(f"graph {index}: {relevant} is not whole blocks ({blocks} attentions)")
                break
    return lines


def compile_model(model: nn.Module, mode: str, backend) -> nn.Module:
    """``model`` compiled by ``mode`` (one of :data:`MODES`) with ``backend``: what to call."""
    if mode == "per_block":
        for unit in SPEC.units:
            model.get_submodule(unit).compile(backend=backend)
        return model
    if mode == "whole_model":
        return torch.compile(model, backend=backend)
    raise ValueError(f"unknown compile mode {mode!r}; use one of {MODES}")


def run_recorded(
    model: nn.Module, optimizer, steps: int, device=None
) -> Tuple[List[float], List[collective_count.StepLog]]:
    """Trains ``steps`` steps on this rank's batches; returns its losses and each step's log.

    Batches go to ``device`` (default the rank's device).
    """
    losses, logs = [], []
    for step in range(steps):
        inputs, targets = data.rank_batch(
            SPEC, seed=0, rank=compat.rank(), step=step, device=device
        )
        log = collective_count.StepLog()
        with log.recording():
            loss = collective_count.run_step(log, model, inputs, targets, SPEC.loss_fn, optimizer)
        losses.append(float(loss))
        logs.append(log)
    return losses, logs


def any_rank(flag: bool, device=None) -> bool:
    """True if ``flag`` is true on some rank (a collective on ``device``).

    ``device`` defaults to the rank's device, where the tensor must live: NCCL has
    no CPU tensors.
    """
    value = torch.tensor(float(flag), device=rank_device.resolve(device))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def break_reasons(model: nn.Module, device=None) -> List[str]:
    """Graph-break reasons ``torch._dynamo.explain`` gives for the first block's forward.

    The block's parameters are gathered (``unshard()``: a collective) so its forward
    runs outside FSDP2's hooks on a random activation of the right shape. Best
    effort, for failure messages: an error while explaining becomes the reason.
    ``device`` (default the rank's device) holds the activation.
    """
    block = model.get_submodule(SPEC.units[0])
    activation = torch.randn(2, tp_models.SEQ, tp_models.DIM, device=rank_device.resolve(device))
    block.unshard()
    try:
        with torch.no_grad():
            explanation = compat.dynamo_explain(block.forward)(activation)
    except Exception as e:  # noqa: BLE001 - reported, not raised: the caller fails anyway
        return [f"torch._dynamo.explain failed: {type(e).__name__}: {str(e)[:300]}"]
    finally:
        block.reshard()
    return [
        f"{reason.reason.strip()} at {reason.user_stack[-1] if reason.user_stack else '?'}"
        for reason in explanation.break_reasons
    ] or [f"{explanation.graph_break_count} breaks, no reason recorded"]


def check_matches_eager(test, mode: str, backend: str, *, steps: int = 3) -> None:
    """Asserts a ``mode``-compiled FSDP2 model trains like eager FSDP2 (run on every rank).

    ``test`` is the running ``MultiRankTestCase``. Trains an eager and a compiled
    FSDP2 model ``steps`` SGD steps on the same rank-distinct batches, then
    asserts: some graph was compiled and none holds part of a block (else the
    failure lists dynamo's break reasons); full parameters and per-step losses
    equal eager's and the unsharded reference's (float32 tolerance); each step's
    collectives, per phase and kind, equal eager's in calls and bytes.
    """
    compat.dynamo_reset()
    eager = wrapping.wrap_spec(SPEC, "fsdp2")
    eager_losses, eager_logs = run_recorded(
        eager, training.default_optimizer(eager.parameters()), steps
    )
    recorder = GraphRecorder(backend)
    model = wrapping.wrap_spec(SPEC, "fsdp2")
    compiled = compile_model(model, mode, recorder)
    losses, logs = run_recorded(compiled, training.default_optimizer(model.parameters()), steps)
    split = split_blocks(recorder.graphs)
    reasons = []
    if any_rank(bool(split) or not recorder.graphs):
        reasons = break_reasons(model)
    reference, _ = training.reference_train(SPEC, steps=steps)
    actual = params.full_params(model)  # collectives: before any assertion
    expected = params.full_params(eager)

    context = f"mode={mode} backend={backend} steps={steps}"
    test.assertNotEmpty(recorder.graphs, f"nothing was compiled [{context}]: {reasons}")
    test.assertEmpty(
        split,
        f"rank {compat.rank()}: a graph break inside a block [{context}]; dynamo's reasons:\n"
        + "\n".join(f"  {r}" for r in reasons),
    )
    parity.assert_params_close(actual, expected, context=f"compiled vs eager, {context}")
    parity.assert_tensors_close(losses, eager_losses, name="loss vs eager", context=context)
    parity.assert_params_close(
        actual, params.full_params(reference), context=f"compiled vs reference, {context}"
    )
    for step, (log, eager_log) in enumerate(zip(logs, eager_logs)):
        collective_count.assert_counts(
            log, eager_log.counts(), context=f"step {step}, compiled vs eager, {context}"
        )
