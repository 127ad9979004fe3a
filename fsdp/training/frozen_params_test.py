"""Frozen parameters stay bitwise unchanged under AdamW with weight decay; the rest train.

The model (``frozen_mix``, defined here: FSDP1's flat parameters refuse it,
so it stays out of the shared registry) has frozen parameters
(``requires_grad=False``) three ways:

* a whole frozen unit (``embed``),
* frozen parameters inside a unit that also trains (``block.fc2.weight`` and
  the LayerNorm ``block.norm`` next to trainable ``block.fc1`` and
  ``block.fc2.bias``),
* a frozen 1-element parameter in the root unit (``temperature``).

Wrapped with FSDP2, or FSDP1 with ``use_orig_params=True``, it is trained for
three steps on rank-distinct data with AdamW (weight decay 0.1) built over
*all* parameters, frozen ones included, as user code often does. Frozen
parameters must have no gradient after every backward and be bitwise equal to
their initial values at the end (weight decay would move them if FSDP gave
them a gradient); all parameters must match a model trained without FSDP on
all ranks' data. FSDP1 with flat parameters must refuse the unit that mixes
frozen and trainable parameters rather than train it.
"""

import torch
from absl.testing import parameterized
from torch import nn

from testing import multirank
from testing.fsdp import models, params, parity, training, wrapping


class _MixedBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.fc2.weight.requires_grad_(False)
        self.norm.requires_grad_(False)

    def forward(self, x):
        return self.norm(x + self.fc2(torch.relu(self.fc1(x))))


class FrozenMix(nn.Module):
    """Frozen unit ``embed``, mixed unit ``block``, frozen root ``temperature``."""

    def __init__(self, in_dim=6, dim=8, out_dim=3):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, dim), nn.Tanh())
        self.block = _MixedBlock(dim)
        self.head = nn.Linear(dim, out_dim)
        self.temperature = nn.Parameter(torch.full((1,), 0.7), requires_grad=False)
        self.embed.requires_grad_(False)

    def forward(self, x):
        return self.head(self.block(self.embed(x))) / self.temperature


def _batch(gen, batch_size):
    return torch.randn(batch_size, 6, generator=gen), torch.randn(batch_size, 3, generator=gen)


SPEC = models.ModelSpec(
    name="frozen_mix",
    factory=FrozenMix,
    units=("embed", "block"),
    make_batch=_batch,
    loss_fn=lambda out, target: nn.functional.mse_loss(out.float(), target.float()),
    description="frozen unit, frozen params inside a trained unit, frozen root param",
)
FROZEN = (
    "block.fc2.weight",
    "block.norm.bias",
    "block.norm.weight",
    "embed.0.bias",
    "embed.0.weight",
    "temperature",
)
STEPS = 3


def _adamw(parameters):
    return torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.1)


class FrozenParamsTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("orig_params_fsdp1", "fsdp1", {"use_orig_params": True}), ("fsdp2", "fsdp2", {})
    )
    def test_frozen_unchanged_under_adamw_trainable_match_reference(self, api, options):
        initial = params.full_params(SPEC.build(seed=0))
        model = wrapping.wrap_spec(SPEC, api, **options)
        frozen = sorted(
            params.clean_name(n) for n, p in model.named_parameters() if not p.requires_grad
        )
        self.assertEqual(frozen, sorted(FROZEN), "frozen parameters after wrapping")
        what = f"api={api} AdamW weight_decay=0.1"

        def no_frozen_grads(m, step):
            with_grad = [
                params.clean_name(n)
                for n, p in m.named_parameters()
                if not p.requires_grad and p.grad is not None
            ]
            self.assertEqual(
                with_grad,
                [],
                f"{what}: frozen parameters with a gradient after backward of step {step}",
            )

        # Over all parameters, frozen ones included: only a None gradient keeps
        # AdamW's weight decay off them.
        opt = _adamw(list(model.parameters()))
        losses = training.train(
            model, SPEC, steps=STEPS, optimizer=opt, before_step=no_frozen_grads
        )
        ref, ref_losses = training.reference_train(SPEC, steps=STEPS, optim_fn=_adamw)
        actual = params.full_params(model)  # collective: before any assert
        parity.assert_unchanged(
            actual, initial, FROZEN, context=f"{what}: frozen parameters vs initial"
        )
        trained = [n for n in actual if n not in FROZEN]
        unmoved = [n for n in trained if torch.equal(actual[n], initial[n])]
        self.assertEqual(unmoved, [], f"{what}: trainable parameters that did not move")
        parity.assert_params_close(actual, params.full_params(ref), context=f"{what}: vs reference")
        parity.assert_tensors_close(losses, ref_losses, name="loss", context=what)

    def test_flat_params_refuse_unit_mixing_frozen_and_trainable_fsdp1(self):
        # Without original parameters one flat parameter has one requires_grad:
        # accepting the mixed unit would train its frozen parameters or freeze
        # its trainable ones.
        with self.assertRaisesRegex(ValueError, "requires_grad"):
            wrapping.wrap_spec(SPEC, "fsdp1", use_orig_params=False)


if __name__ == "__main__":
    multirank.main()
