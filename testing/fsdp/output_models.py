"""Models whose forward output is more than one tensor, for the registry in ``models``.

``partly_used`` (``forward(x, step)`` leaves parts out of the loss depending on the
step; :func:`partly_used_unused` names them) and ``dict_outputs`` (dicts holding
``None``, ints, strings and tuples next to tensors). Loaded by
``models.get``/``models.names``.
"""

from typing import Tuple

import torch
from torch import nn

from testing.fsdp import models


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
    loss = models.mse(outputs["y"], targets)
    if outputs["aux_in_loss"]:
        loss = loss + 0.5 * models.mse(outputs["aux"], targets)
    return loss


PARTLY_USED = models.register(
    models.ModelSpec(
        name="partly_used",
        factory=PartlyUsed,
        units=("branch", "aux"),
        make_batch=models.regression_batch(6, 3),
        loss_fn=_partly_used_loss,
        description="forward(x, step): a unit, a root parameter and an output unused at some steps",
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
    return models.mse(outputs["y"], targets) + 0.1 * outputs["pair"][0].float().pow(2).mean()


DICT_OUTPUTS = models.register(
    models.ModelSpec(
        name="dict_outputs",
        factory=DictOutputs,
        units=("block",),
        make_batch=models.regression_batch(6, 3),
        loss_fn=_dict_outputs_loss,
        description="forward returns dicts with None, ints, strings and tuples next to tensors",
    )
)
