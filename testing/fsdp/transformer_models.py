"""Transformer models for the registry in ``models``: tied embeddings, odd sizes.

``tied_transformer`` (a learned position buffer, ``lm_head`` tied to the
embedding) and ``odd_transformer`` (every dimension odd, learnable token
sequences), both trained with a next-token cross-entropy loss. Loaded by
``models.get``/``models.names``; use those, not this module.
"""

import torch
import torch.nn.functional as F
from torch import nn

from testing.fsdp import models


# (c) Tiny transformer with tied embedding and a buffer -------------------------


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / (d // self.heads) ** 0.5
        scores = scores.masked_fill(mask[:t, :t], float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int = 0, qkv_bias: bool = True):
        super().__init__()
        ffn = ffn or 2 * dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))

    def forward(self, x, mask):
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class TiedTransformer(nn.Module):
    """Decoder-only transformer; ``lm_head.weight`` is ``embed.weight``.

    Has a persistent buffer ``pos`` (fixed sinusoidal positions) and a
    non-persistent buffer ``causal_mask``.
    """

    def __init__(self, vocab=17, dim=16, heads=2, depth=2, max_len=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(_TransformerBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        freq = torch.exp(-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq)
        self.register_buffer("pos", pe)
        mask = torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, tokens):
        """Logits for each position of `tokens` under the causal mask."""
        t = tokens.shape[1]
        x = self.embed(tokens) + self.pos[:t].to(self.embed.weight.dtype)
        for layer in self.layers:
            x = layer(x, self.causal_mask)
        return self.lm_head(self.norm(x))


def _token_batch(gen: torch.Generator, batch_size: int, vocab=17, seq=8) -> models.Batch:
    tokens = torch.randint(0, vocab, (batch_size, seq + 1), generator=gen)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def _lm_loss(logits, targets):
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


TIED_TRANSFORMER = models.register(
    models.ModelSpec(
        name="tied_transformer",
        factory=TiedTransformer,
        # embed and lm_head share a weight, so both stay in the root unit.
        units=("layers.0", "layers.1"),
        make_batch=_token_batch,
        loss_fn=_lm_loss,
        description="2-layer transformer, tied embedding/lm_head, buffers",
    )
)


# (c2) Transformer with odd dimensions ----------------------------------------


class OddTransformer(nn.Module):
    """Decoder-only transformer whose sizes divide by neither 2 nor 4.

    vocab 37, model width 21, 3 heads of 7, feed-forward 45, sequence 7, 3
    blocks; learned positions ``pos`` (7 x 21); ``lm_head.weight`` is
    ``embed.weight``. Every parameter's first dimension is odd, so FSDP2 splits
    each unevenly at world size 2 and 4; every unit has an odd element count
    (3825 per block, 945 in the root), so FSDP1 pads every flat parameter.

    ``qkv`` has no bias (as in LLaMA-style models): a key bias gets a gradient
    of exactly 0 in exact arithmetic (softmax ignores a per-query constant), so
    its computed gradient is rounding noise whose sign Adam turns into full-size
    updates that no two reduction orders agree on. The final LayerNorm has no
    bias, which makes the root's element count odd.
    """

    VOCAB, DIM, HEADS, FFN, SEQ, DEPTH = 37, 21, 3, 45, 7, 3

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(self.VOCAB, self.DIM)
        # Small initial embeddings as in GPT-style models: the tied lm_head then
        # starts near uniform logits instead of a loss several times ln(vocab).
        nn.init.normal_(self.embed.weight, std=0.02)
        self.pos = nn.Parameter(0.02 * torch.randn(self.SEQ, self.DIM))
        self.layers = nn.ModuleList(
            _TransformerBlock(self.DIM, self.HEADS, self.FFN, qkv_bias=False)
            for _ in range(self.DEPTH)
        )
        self.norm = nn.LayerNorm(self.DIM, bias=False)
        self.lm_head = nn.Linear(self.DIM, self.VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight
        mask = torch.triu(torch.ones(self.SEQ, self.SEQ, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, tokens):
        """Logits for each position of `tokens` under the causal mask."""
        t = tokens.shape[1]
        x = self.embed(tokens) + self.pos[:t]
        for layer in self.layers:
            x = layer(x, self.causal_mask)
        return self.lm_head(self.norm(x))


def _stride_token_batch(gen: torch.Generator, batch_size: int) -> models.Batch:
    """Learnable sequences: each counts up from a random token by a stride of 1, 2 or 3.

    The next token follows from the context, so the loss falls below ln(vocab)
    within a few optimizer steps, as in real training, instead of hovering at
    it on random tokens.
    """
    vocab, seq = OddTransformer.VOCAB, OddTransformer.SEQ
    start = torch.randint(0, vocab, (batch_size, 1), generator=gen)
    stride = torch.randint(1, 4, (batch_size, 1), generator=gen)
    tokens = (start + stride * torch.arange(seq + 1)) % vocab
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


ODD_TRANSFORMER = models.register(
    models.ModelSpec(
        name="odd_transformer",
        factory=OddTransformer,
        # Each block is a unit; the tied embed/lm_head stay in the root unit.
        units=tuple(f"layers.{i}" for i in range(OddTransformer.DEPTH)),
        make_batch=_stride_token_batch,
        loss_fn=_lm_loss,
        description="3-block transformer, odd sizes (vocab 37, width 21, 3 heads, ffn 45), tied, "
        "learnable token sequences",
    )
)
