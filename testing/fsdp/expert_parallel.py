"""A tiny mixture-of-experts model with expert parallelism, for FSDP2 gradient divide factors.

:class:`MoE`: a dense input layer, ``E`` expert MLPs, a dense output layer
(:func:`spec`). Token ``i`` of a rank's batch goes to expert ``i % E`` (fixed
routing, so the unsharded reference routes the global batch identically).

Expert parallelism (:func:`build`): the world is an ``(edp, ep)`` mesh
(:func:`meshes.expert_mesh`), ``E = ep``, one expert per ``ep`` rank. Each rank
keeps only its expert; the ``ep`` group gathers its tokens (autograd-aware
all-reduces of ``torch.distributed.nn.functional``), each rank runs its expert on
the tokens routed to it, and an all-reduce returns every token's expert output to
its rank. A rank's expert gradient therefore already
sums the ``ep`` ranks' contributions before FSDP2 reduces it over ``edp``, where
its default divides by ``edp`` only: expert gradients come out ``ep`` times too
large unless the experts' divide factor is the world size (pytorch#160285).

:func:`reference_grads` are the unsharded gradients of the global batch; FSDP2's
reduced gradients must equal ``world / factor`` times them (:func:`scale`).
"""

import functools
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn

from testing.fsdp import data, models, params, rank_device

IN, DIM, HIDDEN, OUT = 8, 12, 16, 4


def _expert() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, DIM))


class MoE(nn.Module):
    """Dense layers around experts; ``experts`` holds all of them, or one rank's under EP.

    ``ep_group``/``ep_rank`` (set by :func:`build`) switch the expert layer to
    expert parallelism: this rank's ``experts[0]`` is expert ``ep_rank``.
    """

    def __init__(self, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        self.inp = nn.Linear(IN, DIM)
        self.experts = nn.ModuleList(_expert() for _ in range(num_experts))
        self.out = nn.Linear(DIM, OUT)
        self.ep_group: Optional[dist.ProcessGroup] = None
        self.ep_rank = 0

    def forward(self, x):
        """Dense input, residual expert layer, dense output."""
        h = torch.tanh(self.inp(x))
        expert_of = torch.arange(h.shape[0], device=h.device) % self.num_experts
        if self.ep_group is None:
            moe = torch.zeros_like(h)
            for e, expert in enumerate(self.experts):
                mask = (expert_of == e).unsqueeze(1)
                moe = moe + mask * expert(h)
        else:
            moe = self._expert_parallel(h, expert_of)
        return self.out(h + moe)

    def _expert_parallel(self, h, expert_of):
        """Every ``ep`` rank's tokens through this rank's expert, outputs back to their ranks."""
        size = dist.get_world_size(self.ep_group)
        me = dist.get_rank(self.ep_group)
        # An all-gather as a sum of zero-padded slots: all_reduce's backward (an
        # all-reduce) then hands each rank the gradient of its own tokens. (The
        # backward of torch.distributed.nn.functional.all_gather fails on gloo
        # subgroups in torch 2.13: it passes a group rank where a global one is due.)
        slots = [h if j == me else torch.zeros_like(h) for j in range(size)]
        gathered = dist_fn.all_reduce(torch.cat(slots), group=self.ep_group)
        mine = (expert_of.repeat(size) == self.ep_rank).unsqueeze(1)
        contribution = mine * self.experts[0](gathered)
        # Summing every rank's contribution gives each token its own expert's output.
        total = dist_fn.all_reduce(contribution, group=self.ep_group)
        return total.chunk(size)[me]


def _batch(gen: torch.Generator, batch_size: int) -> models.Batch:
    return torch.randn(batch_size, IN, generator=gen), torch.randn(batch_size, OUT, generator=gen)


def _mse(outputs, targets):
    return F.mse_loss(outputs, targets)


_SPECS: Dict[int, models.ModelSpec] = {}


def spec(num_experts: int) -> models.ModelSpec:
    """The :class:`models.ModelSpec` of a :class:`MoE` with ``num_experts`` experts.

    Batches of 4 tokens per rank: a multiple of the expert count used here (2 or
    4), so token ``i`` of a rank is token ``r * 4 + i`` of the global batch and goes
    to the same expert in the reference.
    """
    if num_experts not in _SPECS:
        _SPECS[num_experts] = models.ModelSpec(
            name=f"moe{num_experts}",
            factory=functools.partial(MoE, num_experts),
            units=("experts.0",),
            make_batch=_batch,
            loss_fn=_mse,
            description="dense layers around experts; fixed routing token i -> expert i % E",
        )
    return _SPECS[num_experts]


def build(mesh, device=None, seed: int = 0) -> nn.Module:
    """:func:`spec` ``(ep)``'s model from ``seed``, expert-parallel over ``mesh["ep"]`` (unsharded).

    Keeps expert ``ep_rank`` only (as ``experts.0``); the caller shards it over
    ``mesh["edp"]`` and the rest over the world. ``device`` defaults to the rank's device.
    """
    model = spec(mesh.size(mesh.mesh_dim_names.index("ep"))).build(seed)
    ep_rank = mesh.get_local_rank("ep")
    model.experts = nn.ModuleList([model.experts[ep_rank]])
    model.ep_group, model.ep_rank = mesh.get_group("ep"), ep_rank
    return model.to(rank_device.resolve(device))


def expert_name(name: str, ep_rank: int) -> str:
    """``experts.0.<rest>`` of an EP rank as the unsharded model names it: ``experts.<ep_rank>``."""
    prefix = "experts.0."
    return f"experts.{ep_rank}." + name[len(prefix) :] if name.startswith(prefix) else name


def reference_grads(
    num_experts: int, *, world_size: int, step: int = 0, seed: int = 0, device=None
) -> Tuple[nn.Module, Dict[str, Optional[torch.Tensor]]]:
    """The unsharded model and its gradients after one backward on the global batch of ``step``.

    The model and batch are on ``device`` (default the rank's device).
    """
    moe = spec(num_experts)
    device = rank_device.resolve(device)
    model = moe.build(seed).to(device)
    inputs, targets = data.global_batch(
        moe, seed=seed, world_size=world_size, step=step, device=device
    )
    moe.loss_fn(model(inputs), targets).backward()
    return model, params.full_grads(model)


def scale(world_size: int, factor: float) -> float:
    """What FSDP2 with divide factor ``factor`` multiplies the global-batch gradient by.

    Every rank's gradient (an expert's already summed over ``ep``) is summed over the
    world once and divided by ``factor``; the global-batch mean gradient is that sum
    divided by ``world_size``.
    """
    return world_size / factor
