"""A tiny decoder-only transformer ready for tensor parallelism, and its TP plans.

:data:`SPEC` (2 blocks) and :data:`ONE_BLOCK` are :class:`models.ModelSpec` s whose
attention and feed-forward projections are separate ``nn.Linear`` modules, so torch's
``parallelize_module`` can split them column-wise and row-wise; attention derives
its number of heads from the width of the local ``q`` projection, so the same
module runs unsharded (reference), or with ``HEADS / tp`` heads per rank. Sizes
(vocab 32, width 16, 4 heads, hidden 32, sequence 8) divide evenly by every
``tp`` and ``dp`` up to 4, so every shard has the same shape.

Not in the :mod:`models` registry: its plans need a tensor-parallel mesh, and the
registry's models are trained by every self-test under plain FSDP.

Two plans (:func:`tp_plan`):

* ``sequence_parallel``: every parameter becomes a DTensor on the ``tp`` mesh
  (embedding row-wise, norms sequence-parallel, projections and output head
  column/row-wise), so after ``fully_shard`` every parameter is 2-D (dp, tp);
  the layout torch's own 2-D recipes use.
* ``blocks_only``: only the blocks' projections are split; the embedding, norms
  and head stay plain tensors, so ``fully_shard`` puts them on the 1-D ``dp``
  mesh while the projections are 2-D: two meshes in one model.
"""

import functools
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    SequenceParallel,
)

from testing.fsdp import models

VOCAB, DIM, HEADS, HIDDEN, SEQ = 32, 16, 4, 32, 8
HEAD_DIM = DIM // HEADS
PLANS = ("sequence_parallel", "blocks_only")

# Projections and the dimension of their weight that tensor parallelism splits
# (bias: column-wise splits it too, row-wise replicates it).
_COLWISE = ("wq", "wk", "wv", "w1")
_ROWWISE = ("wo", "w2")


class TpBlock(nn.Module):
    """Pre-norm attention and feed-forward with separate, splittable projections."""

    def __init__(self):
        super().__init__()
        self.attention_norm = nn.LayerNorm(DIM)
        self.wq = nn.Linear(DIM, DIM, bias=False)
        self.wk = nn.Linear(DIM, DIM, bias=False)
        self.wv = nn.Linear(DIM, DIM, bias=False)
        self.wo = nn.Linear(DIM, DIM, bias=False)
        self.ffn_norm = nn.LayerNorm(DIM)
        self.w1 = nn.Linear(DIM, HIDDEN)
        self.w2 = nn.Linear(HIDDEN, DIM)

    def forward(self, x):
        """Residual causal attention, then a residual ReLU feed-forward."""
        h = self.attention_norm(x)
        q, k, v = self.wq(h), self.wk(h), self.wv(h)
        b, t, width = q.shape  # width is DIM / tp under tensor parallelism
        q, k, v = (z.view(b, t, width // HEAD_DIM, HEAD_DIM).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(y.transpose(1, 2).reshape(b, t, width))
        return x + self.w2(torch.relu(self.w1(self.ffn_norm(x))))


class TpTransformer(nn.Module):
    """Embedding, ``depth`` :class:`TpBlock` units, final norm, output head."""

    def __init__(self, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(TpBlock() for _ in range(depth))
        self.norm = nn.LayerNorm(DIM)
        self.output = nn.Linear(DIM, VOCAB)

    def forward(self, tokens):
        """Logits for every position of ``tokens``."""
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))

    @torch.no_grad()
    def generate(self, tokens, new_tokens: int = 3):
        """Greedy continuation of ``tokens`` by ``new_tokens``; returns ``(tokens, last logits)``.

        Calls the embedding, blocks and head itself, not ``forward``, as inference
        entry points do: FSDP2 gathers the root's own parameters for it only when
        told to (``register_fsdp_forward_method(model, "generate")``).
        """
        logits = None
        for _ in range(new_tokens):
            x = self.embed(tokens[:, -SEQ:])
            for layer in self.layers:
                x = layer(x)
            logits = self.output(self.norm(x))[:, -1]
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
        return tokens, logits


def _token_batch(gen: torch.Generator, batch_size: int) -> models.Batch:
    tokens = torch.randint(0, VOCAB, (batch_size, SEQ + 1), generator=gen)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def _lm_loss(logits, targets):
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _spec(depth: int) -> models.ModelSpec:
    return models.ModelSpec(
        name=f"tp_transformer{depth}",
        factory=functools.partial(TpTransformer, depth),
        units=tuple(f"layers.{i}" for i in range(depth)),
        make_batch=_token_batch,
        loss_fn=_lm_loss,
        description=f"{depth}-block transformer with splittable projections",
    )


# Two blocks: FSDP units between which compiled graphs, hooks and prefetches alternate.
SPEC = _spec(2)
# One block: every placement tensor parallelism gives, at half the DTensor work per step
# (what the 2-D tests run, four ranks on few cores).
ONE_BLOCK = _spec(1)


def tp_plan(kind: str, units=SPEC.units) -> Dict[str, object]:
    """The ``parallelize_module`` plan ``kind`` (one of :data:`PLANS`) for blocks ``units``."""
    if kind not in PLANS:
        raise ValueError(f"unknown TP plan {kind!r}; use one of {PLANS}")
    plan: Dict[str, object] = {}
    sequence = kind == "sequence_parallel"
    # Under sequence parallelism, activations between blocks are split on the
    # sequence dimension (Shard(1)); each projection gathers them first.
    col = dict(input_layouts=Shard(1)) if sequence else {}
    row = dict(output_layouts=Shard(1)) if sequence else {}
    for unit in units:
        for name in _COLWISE:
            plan[f"{unit}.{name}"] = ColwiseParallel(**col)
        for name in _ROWWISE:
            plan[f"{unit}.{name}"] = RowwiseParallel(**row)
        if sequence:
            plan[f"{unit}.attention_norm"] = SequenceParallel()
            plan[f"{unit}.ffn_norm"] = SequenceParallel()
    if sequence:
        plan["embed"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
        plan["norm"] = SequenceParallel()
        plan["output"] = ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate())
    return plan


def tp_dim(name: str, kind: str) -> Optional[int]:
    """The dimension of parameter ``name`` that plan ``kind`` splits over ``tp``, or None.

    None means the parameter is replicated over ``tp`` (a DTensor under
    ``sequence_parallel``, a plain tensor under ``blocks_only``).
    """
    module, _, leaf = name.rpartition(".")
    last = module.rpartition(".")[2]
    if last in _COLWISE:
        return 0
    if last in _ROWWISE:
        return 1 if leaf == "weight" else None
    if kind == "sequence_parallel" and module in ("embed", "output"):
        # embed: row-wise on an embedding splits the vocabulary (dim 0);
        # output: column-wise splits dim 0 of the weight and the bias.
        return 0
    return None


def on_tp_mesh(name: str, kind: str) -> bool:
    """True if plan ``kind`` makes parameter ``name`` a DTensor on the ``tp`` mesh.

    Every parameter under ``sequence_parallel``; under ``blocks_only`` those of the
    split projections (a row-wise bias too, replicated over ``tp``).
    """
    projection = name.rpartition(".")[0].rpartition(".")[2]
    return kind == "sequence_parallel" or projection in _COLWISE + _ROWWISE
