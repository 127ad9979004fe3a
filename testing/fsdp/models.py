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
The MLP-like models live here; ``transformer_models`` and ``output_models``
register the transformers and the models with step-dependent or non-tensor
outputs, and are loaded by the first ``get`` or ``names``.
"""

import dataclasses
import importlib
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
# Modules that register more models, one family each, imported on first lookup (they
# import this module for ModelSpec and register).
_FAMILIES = ("testing.fsdp.transformer_models", "testing.fsdp.output_models")


def _registry() -> Dict[str, ModelSpec]:
    for module in _FAMILIES:
        importlib.import_module(module)
    return _REGISTRY


def register(spec: ModelSpec) -> ModelSpec:
    """Adds ``spec`` to the registry (name must be new) and returns it."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> ModelSpec:
    """Returns the registered :class:`ModelSpec` called ``name``."""
    registry = _registry()
    try:
        return registry[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {sorted(registry)}") from None


def names() -> List[str]:
    """Names of all registered models, sorted (handy for parameterized tests)."""
    return sorted(_registry())


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


def regression_batch(in_dim: int, out_dim: int) -> Callable[[torch.Generator, int], Batch]:
    """A batch maker of standard normal inputs and targets (a regression task)."""

    def make(gen: torch.Generator, batch_size: int) -> Batch:
        x = torch.randn(batch_size, in_dim, generator=gen)
        y = torch.randn(batch_size, out_dim, generator=gen)
        return x, y

    return make


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error, in float32 whatever the compute dtype (mixed precision runs)."""
    return F.mse_loss(outputs.float(), targets.float())


def register_regression(
    name: str,
    factory: Callable[[], nn.Module],
    units: Tuple[str, ...],
    dims: Tuple[int, int],
    description: str,
    **options,
) -> ModelSpec:
    """Registers a model trained on :func:`regression_batch` of ``dims`` with :func:`mse`.

    ``dims`` is ``(in_dim, out_dim)``; ``options`` are further :class:`ModelSpec` fields.
    """
    return register(
        ModelSpec(
            name=name,
            factory=factory,
            units=units,
            make_batch=regression_batch(*dims),
            loss_fn=mse,
            description=description,
            **options,
        )
    )


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


NESTED_MLP = register_regression(
    name="nested_mlp",
    factory=NestedMLP,
    # layers.0.fc1 is nested inside the layers.0 unit on purpose.
    units=("layers.0.fc1", "layers.0", "layers.1", "layers.2"),
    dims=(8, 4),
    description="residual MLP; units nest (layers.0.fc1 inside layers.0)",
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


SHARED_TWICE = register_regression(
    name="shared_twice",
    factory=SharedTwice,
    units=("shared",),
    dims=(8, 4),
    description="submodule 'shared' runs twice per forward",
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


UNEVEN_MLP = register_regression(
    name="uneven_mlp",
    factory=UnevenMLP,
    units=("fc1", "fc3"),
    dims=(5, 3),
    description="uneven shards; params with fewer elements than world size",
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


BATCHNORM_MLP = register_regression(
    name="batchnorm_mlp",
    factory=BatchNormMLP,
    units=("block",),
    dims=(8, 4),
    local_batch_stats=True,
    description="BatchNorm1d; statistics are per rank (not SyncBatchNorm)",
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


FROZEN_BACKBONE = register_regression(
    name="frozen_backbone",
    factory=FrozenBackboneMLP,
    # FSDP1 without use_orig_params needs frozen and trainable params in
    # different units, hence the frozen backbone is its own unit.
    units=("backbone",),
    dims=(8, 4),
    description="frozen backbone (requires_grad=False) in its own unit",
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


TINY_PARAMS = register_regression(
    name="tiny_params",
    factory=TinyParams,
    units=("head", "gain"),
    dims=(3, 1),
    description="1-row Linear, a unit of one 1-element parameter, a 1-element root param",
)
