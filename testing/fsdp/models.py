"""Small deterministic models for FSDP behaviour tests, with a registry.

Every builder returns a :class:`ModelSpec`: how to build the model from a seed
(identical parameters on every rank for the same seed, independent of and
without disturbing the global RNG state), its natural FSDP wrap units
(qualified submodule names), how to make a ``(inputs, targets)`` batch and the
loss.  Models are built on CPU in float32 and are tiny so that a training step
takes milliseconds on CPU.

    spec = models.get("nested_mlp")
    model = spec.build(seed=0)
    inputs, targets = spec.make_batch(torch.Generator().manual_seed(0), 4)
    loss = spec.loss_fn(model(inputs), targets)

``models.names()`` lists the registry for parametrizing over every builder.
"""

import dataclasses
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Batch = Tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model family: builder, wrap units, batch maker and loss.

    Attributes:
      name: registry name.
      factory: zero-argument callable that constructs the model (uses the
        global RNG; call :meth:`build` instead, which seeds it).
      units: qualified names of submodules to wrap/shard separately, in any
        order (wrapping helpers wrap deepest first, then the root).
      make_batch: ``(generator, batch_size) -> (inputs, targets)`` on CPU.
      loss_fn: ``(outputs, targets) -> scalar`` mean loss over the batch.
      local_batch_stats: True if the forward depends on batch statistics
        (BatchNorm), so a reference must run each rank's batch separately
        instead of the concatenated global batch.
      description: one line for humans.
    """

    name: str
    factory: Callable[[], nn.Module]
    units: Tuple[str, ...]
    make_batch: Callable[[torch.Generator, int], Batch]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    local_batch_stats: bool = False
    description: str = ""

    def build(self, seed: int = 0) -> nn.Module:
        """Builds the model on CPU with parameters determined only by ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.factory()


_REGISTRY: Dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Adds ``spec`` to the registry (name must be new) and returns it."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> ModelSpec:
    """Returns the registered :class:`ModelSpec` called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {sorted(_REGISTRY)}") from None


def names() -> List[str]:
    """Names of all registered models, sorted (handy for parameterized tests)."""
    return sorted(_REGISTRY)


def rank_distinct_model(spec: ModelSpec, rank: int) -> nn.Module:
    """``spec`` built from seed ``rank``, floating buffers shifted by ``rank + len(name) / 2``.

    Parameters and buffers (e.g. BatchNorm running statistics) then differ across
    ranks; for tests that make ranks agree (``sync_module_states``, broadcasts).
    """
    model = spec.build(seed=rank)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if buffer.is_floating_point():
                buffer.add_(rank + 0.5 * len(name))
    return model


def _regression_batch(in_dim: int, out_dim: int) -> Callable[[torch.Generator, int], Batch]:
    def make(gen: torch.Generator, batch_size: int) -> Batch:
        x = torch.randn(batch_size, in_dim, generator=gen)
        y = torch.randn(batch_size, out_dim, generator=gen)
        return x, y

    return make


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Loss in float32 whatever the compute dtype (mixed precision runs).
    return F.mse_loss(outputs.float(), targets.float())


# (a) Nested MLP -------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class NestedMLP(nn.Module):
    """Input projection, a stack of residual blocks, output projection."""

    def __init__(self, in_dim=8, dim=16, hidden=32, out_dim=4, depth=3):
        super().__init__()
        self.inp = nn.Linear(in_dim, dim)
        self.layers = nn.Sequential(*[_Block(dim, hidden) for _ in range(depth)])
        self.out = nn.Linear(dim, out_dim)

    def forward(self, x):
        """Input layer, the nested blocks, then the output layer."""
        return self.out(self.layers(torch.relu(self.inp(x))))


NESTED_MLP = register(
    ModelSpec(
        name="nested_mlp",
        factory=NestedMLP,
        # layers.0.fc1 is nested inside the layers.0 unit on purpose.
        units=("layers.0.fc1", "layers.0", "layers.1", "layers.2"),
        make_batch=_regression_batch(8, 4),
        loss_fn=_mse,
        description="residual MLP; units nest (layers.0.fc1 inside layers.0)",
    )
)


# (b) Submodule called twice --------------------------------------------------


class SharedTwice(nn.Module):
    """Applies ``shared`` twice in one forward (weight reuse inside a step)."""

    def __init__(self, in_dim=8, dim=12, out_dim=4):
        super().__init__()
        self.inp = nn.Linear(in_dim, dim)
        self.shared = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.out = nn.Linear(dim, out_dim)

    def forward(self, x):
        """Applies the shared layer twice, the second time to a shifted input."""
        h = torch.relu(self.inp(x))
        h = self.shared(h)
        h = self.shared(h * 0.5 + 1.0)
        return self.out(h)


SHARED_TWICE = register(
    ModelSpec(
        name="shared_twice",
        factory=SharedTwice,
        units=("shared",),
        make_batch=_regression_batch(8, 4),
        loss_fn=_mse,
        description="submodule 'shared' runs twice per forward",
    )
)


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


def _token_batch(gen: torch.Generator, batch_size: int, vocab=17, seq=8) -> Batch:
    tokens = torch.randint(0, vocab, (batch_size, seq + 1), generator=gen)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def _lm_loss(logits, targets):
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


TIED_TRANSFORMER = register(
    ModelSpec(
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


def _stride_token_batch(gen: torch.Generator, batch_size: int) -> Batch:
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


ODD_TRANSFORMER = register(
    ModelSpec(
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


# (d) Uneven dimensions -------------------------------------------------------


class UnevenMLP(nn.Module):
    """Odd sizes: no dimension divides 2 or 4; ``fc3.bias`` has 3 elements."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 7)
        self.fc2 = nn.Linear(7, 11)
        self.fc3 = nn.Linear(11, 3)
        self.scale = nn.Parameter(torch.ones(1))  # fewer elements than ranks

    def forward(self, x):
        """Three uneven Linear layers, scaled by the root parameter."""
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x))))) * self.scale


UNEVEN_MLP = register(
    ModelSpec(
        name="uneven_mlp",
        factory=UnevenMLP,
        units=("fc1", "fc3"),
        make_batch=_regression_batch(5, 3),
        loss_fn=_mse,
        description="uneven shards; params with fewer elements than world size",
    )
)


# (e) BatchNorm ----------------------------------------------------------------


class BatchNormMLP(nn.Module):
    """MLP with BatchNorm1d (running-stat buffers, batch-dependent forward)."""

    def __init__(self, in_dim=8, dim=16, out_dim=4):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU())
        self.head = nn.Sequential(
            nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(), nn.Linear(dim, out_dim)
        )

    def forward(self, x):
        """The BatchNorm block, then the head."""
        return self.head(self.block(x))


BATCHNORM_MLP = register(
    ModelSpec(
        name="batchnorm_mlp",
        factory=BatchNormMLP,
        units=("block",),
        make_batch=_regression_batch(8, 4),
        loss_fn=_mse,
        local_batch_stats=True,
        description="BatchNorm1d; statistics are per rank (not SyncBatchNorm)",
    )
)


# (f) Frozen part ----------------------------------------------------------------


class FrozenBackboneMLP(nn.Module):
    """``backbone`` has ``requires_grad=False``; only ``head`` trains."""

    def __init__(self, in_dim=8, dim=16, out_dim=4):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out_dim))
        self.backbone.requires_grad_(False)

    def forward(self, x):
        """The (frozen) backbone, then the trainable head."""
        return self.head(torch.relu(self.backbone(x)))


FROZEN_BACKBONE = register(
    ModelSpec(
        name="frozen_backbone",
        factory=FrozenBackboneMLP,
        # FSDP1 without use_orig_params needs frozen and trainable params in
        # different units, hence the frozen backbone is its own unit.
        units=("backbone",),
        make_batch=_regression_batch(8, 4),
        loss_fn=_mse,
        description="frozen backbone (requires_grad=False) in its own unit",
    )
)


# (g) Parts unused at some steps ---------------------------------------------------


class _Gained(nn.Module):
    """``Linear + Tanh`` scaled by a 1-element parameter ``gain``."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.gain = nn.Parameter(torch.full((1,), 0.8))

    def forward(self, x):
        return torch.tanh(self.fc(x)) * self.gain


class PartlyUsed(nn.Module):
    """A model whose forward leaves parts out of the loss depending on ``step``.

    ``forward(x, step=0)`` returns ``{"y": tensor, "aux": tensor, "aux_in_loss": bool}``.
    The schedule (:func:`partly_used_unused` lists the parameters left out):

    * ``branch`` (a whole unit, with a 1-element ``gain``) runs only on odd steps;
    * ``shift`` (a root parameter) is added only on even steps;
    * ``aux`` (a unit) runs on every step, but its output is in the loss
      (``aux_in_loss``) only on odd steps.
    """

    def __init__(self, in_dim=6, dim=8, out_dim=3):
        super().__init__()
        self.inp = nn.Linear(in_dim, dim)
        self.branch = _Gained(dim)
        self.shift = nn.Parameter(torch.randn(dim) * 0.1)
        self.aux = nn.Linear(dim, out_dim)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, x, step: int = 0):
        """Outputs for `step`: the branch runs on odd steps, the shift on even ones."""
        h = torch.relu(self.inp(x))
        if step % 2 == 1:
            h = h + self.branch(h)
        else:
            h = h + self.shift
        return {"y": self.out(h), "aux": self.aux(h), "aux_in_loss": step % 2 == 1}


def partly_used_unused(step: int) -> Tuple[str, ...]:
    """Names of the :class:`PartlyUsed` parameters that get no gradient at ``step``."""
    if step % 2 == 1:
        return ("shift",)
    return ("aux.bias", "aux.weight", "branch.fc.bias", "branch.fc.weight", "branch.gain")


def _partly_used_loss(outputs, targets):
    loss = _mse(outputs["y"], targets)
    if outputs["aux_in_loss"]:
        loss = loss + 0.5 * _mse(outputs["aux"], targets)
    return loss


PARTLY_USED = register(
    ModelSpec(
        name="partly_used",
        factory=PartlyUsed,
        units=("branch", "aux"),
        make_batch=_regression_batch(6, 3),
        loss_fn=_partly_used_loss,
        description="forward(x, step): a unit, a root parameter and an output unused at some steps",
    )
)


# (h) Tiny parameters --------------------------------------------------------------


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.value = nn.Parameter(torch.full((1,), 1.5))

    def forward(self, x):
        return x * self.value


class TinyParams(nn.Module):
    """Parameters smaller than any world size > 1: whole shards are empty.

    ``head`` is ``Linear(2, 1)`` (weight 1x2, bias of 1 element); ``gain`` is a
    unit that holds only a 1-element parameter; ``offset`` is a 1-element root
    parameter.
    """

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.head = nn.Linear(2, 1)
        self.gain = _Scale()
        self.offset = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        """Projection, one-row head, then the one-element gain and offset."""
        return self.gain(self.head(torch.tanh(self.proj(x)))) + self.offset


TINY_PARAMS = register(
    ModelSpec(
        name="tiny_params",
        factory=TinyParams,
        units=("head", "gain"),
        make_batch=_regression_batch(3, 1),
        loss_fn=_mse,
        description="1-row Linear, a unit of one 1-element parameter, a 1-element root param",
    )
)


# (i) Non-tensor values in forward outputs -------------------------------------------


class _DictBlock(nn.Module):
    """A unit taking a ``None`` keyword and returning a dict of tensors and non-tensors."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        h = torch.tanh(self.fc(x) if mask is None else self.fc(x) * mask)
        return {"h": h, "skipped": None, "meta": (h.shape[0], "tanh"), "parts": [h * 0.5, None]}


class DictOutputs(nn.Module):
    """Units and root return dicts mixing tensors with ``None``, ints, strings and tuples.

    ``forward(x)`` returns ``{"y": tensor, "aux": None, "count": int, "tag": str,
    "pair": (tensor, None)}``; only ``y`` and ``pair[0]`` carry gradients.
    """

    def __init__(self, in_dim=6, dim=8, out_dim=3):
        super().__init__()
        self.inp = nn.Linear(in_dim, dim)
        self.block = _DictBlock(dim)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x):
        """The dict of tensors and non-tensors described in the class docstring."""
        o = self.block(torch.relu(self.inp(x)), mask=None)
        y = self.head(o["h"] + o["parts"][0])
        return {
            "y": y,
            "aux": o["skipped"],
            "count": o["meta"][0],
            "tag": o["meta"][1],
            "pair": (o["h"].mean(dim=1), None),
        }


def _dict_outputs_loss(outputs, targets):
    return _mse(outputs["y"], targets) + 0.1 * outputs["pair"][0].float().pow(2).mean()


DICT_OUTPUTS = register(
    ModelSpec(
        name="dict_outputs",
        factory=DictOutputs,
        units=("block",),
        make_batch=_regression_batch(6, 3),
        loss_fn=_dict_outputs_loss,
        description="forward returns dicts with None, ints, strings and tuples next to tensors",
    )
)
