"""Parameters, units and outputs left out of the loss at some steps get no update there.

The ``partly_used`` model's forward takes the step: on even steps the
``branch`` unit (with a 1-element parameter) does not run and the ``aux``
unit runs but its output is left out of the loss; on odd steps the root
parameter ``shift`` is not used. Four steps on rank-distinct data, so each part
is unused at the first or the last step.

After every step, with FSDP1 and FSDP2, every parameter matches a model
trained without FSDP on all ranks' data, and the parameters left out at that
step are bitwise equal to their values before it:

* plain SGD (no momentum, no weight decay): every unused parameter; any
  spurious gradient would move it;
* AdamW with weight decay: torch skips a parameter whose gradient is None, so
  FSDP2 must leave the gradient of every unused parameter None, not zero. FSDP1
  flattens each unit's parameters into one: a wholly unused unit gets no
  gradient (unchanged), but an unused parameter of a unit that is used gets a
  zero gradient, with or without ``use_orig_params``, which AdamW decays. For
  FSDP1 the reference fills those gradients with zeros too (FSDP1's semantics),
  and only the wholly unused units must stay unchanged.

The reference itself is checked to follow the schedule (exactly the expected
parameters stay unchanged at each step), so the test cannot pass vacuously.
After every step the model must still list every parameter.

Found with torch 2.13 (CPU), and seen on 2.10, 2.12 and 2.14.1 too: FSDP1
``NO_SHARD`` with ``use_orig_params=True`` drops the parameters of a unit that
ran forward but got no backward (``aux`` at step 0) from ``named_parameters()``
for good: FSDP1 swaps a unit's parameters for plain tensor views during forward
and restores them when it reshards, which ``NO_SHARD`` never does. The
``no_shard`` case shows it at every world size; at world size 1 FSDP1 runs
``NO_SHARD`` whatever it is asked, so the ``adamw_orig_params_fsdp1`` case
shows it there. Both are ``known_failures``.
"""

import torch
from absl.testing import parameterized

from testing import known_failures, multirank
from testing.fsdp import at_world_size, models, output_models, params, parity, training, wrapping

SPEC = models.get("partly_used")
STEPS = 4


def _sgd(parameters):
    """Plain SGD: a zero gradient leaves a parameter bitwise unchanged."""
    return torch.optim.SGD(parameters, lr=0.1)


def _adamw(parameters):
    """AdamW with weight decay: skips parameters whose gradient is None."""
    return torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.1)


def _step_kwargs(step):
    return {"step": step}


def _unit_of(name):
    """The wrap unit (``""`` for the root) whose FSDP1 flat parameter holds ``name``."""
    units = [u for u in SPEC.units if name.startswith(u + ".")]
    return max(units, key=len) if units else ""


def _zero_fill_used_units(model, step):
    """FSDP1's semantics in the reference: a used unit's unused parameters get zero grads."""
    del step
    named = list(model.named_parameters())
    used_units = {_unit_of(n) for n, p in named if p.grad is not None}
    for name, p in named:
        if p.grad is None and _unit_of(name) in used_units:
            p.grad = torch.zeros_like(p)


def _expected_unchanged(step, api, optim_fn):
    """Parameters that must stay bitwise unchanged at ``step``."""
    unused = output_models.partly_used_unused(step)
    if api == "fsdp1" and optim_fn is _adamw:
        used_units = {_unit_of(n) for n in params.full_params(SPEC.build(0)) if n not in unused}
        return tuple(n for n in unused if _unit_of(n) not in used_units)
    return unused


def _no_shard_orig_params_bug(condition=None):
    return known_failures.TorchBug(
        "FSDP1 NO_SHARD use_orig_params unit without backward",
        "FSDP1 NO_SHARD with use_orig_params=True leaves a unit that ran forward without "
        "backward on plain tensor views, so its parameters vanish from named_parameters()",
        affected=">=2.10",
        condition=condition,
    )


_METHOD = "test_unused_parts_not_updated_and_used_match_reference"


class UnusedParamsTest(multirank.MultiRankTestCase, parameterized.TestCase):
    known_failures = {
        f"{_METHOD}_adamw_orig_params_no_shard_fsdp1": _no_shard_orig_params_bug(),
        f"{_METHOD}_adamw_orig_params_fsdp1": _no_shard_orig_params_bug(
            known_failures.Condition(
                "one rank, where FSDP1 runs NO_SHARD",
                lambda case: not at_world_size.fsdp1_shards(case.world_size),
            )
        ),
    }

    @parameterized.named_parameters(
        ("sgd_fsdp1", "fsdp1", {}, _sgd),
        ("sgd_fsdp2", "fsdp2", {}, _sgd),
        ("adamw_fsdp1", "fsdp1", {}, _adamw),
        ("adamw_orig_params_fsdp1", "fsdp1", {"use_orig_params": True}, _adamw),
        (
            "adamw_orig_params_no_shard_fsdp1",
            "fsdp1",
            {"use_orig_params": True, "sharding_strategy": "NO_SHARD"},
            _adamw,
        ),
        ("adamw_fsdp2", "fsdp2", {}, _adamw),
    )
    def test_unused_parts_not_updated_and_used_match_reference(self, api, options, optim_fn):
        model = wrapping.wrap_spec(SPEC, api, **options)
        opt = optim_fn([p for p in model.parameters() if p.requires_grad])
        ref = SPEC.build(seed=0).to(self.device)
        ref_opt = optim_fn(list(ref.parameters()))
        ref_hook = _zero_fill_used_units if api == "fsdp1" else None
        names = list(params.full_params(ref))
        checked = 0
        for step in range(STEPS):
            unchanged = _expected_unchanged(step, api, optim_fn)
            checked += len(unchanged)
            what = f"api={api} {optim_fn.__name__[1:]} step {step}"
            ref_before = params.full_params(ref)
            training.reference_train(
                SPEC,
                steps=[step],
                forward_kwargs=_step_kwargs,
                before_step=ref_hook,
                model=ref,
                optimizer=ref_opt,
            )
            ref_after = params.full_params(ref)
            moved = sorted(n for n in names if not torch.equal(ref_before[n], ref_after[n]))
            self.assertEqual(
                moved,
                sorted(set(names) - set(unchanged)),
                f"reference, {what}: the parameters that moved are not the schedule's",
            )

            before = params.full_params(model)
            training.train(
                model,
                SPEC,
                steps=[step],
                optimizer=opt,
                forward_kwargs=_step_kwargs,
            )
            after = params.full_params(model)  # collective: before any assert
            self.assertEqual(
                sorted(set(names) - set(after)), [], f"{what}: parameters the model no longer lists"
            )
            parity.assert_unchanged(
                after, before, unchanged, context=f"{what}: unused at this step vs before it"
            )
            parity.assert_params_close(after, ref_after, context=f"{what}: vs reference")
        self.assertGreater(checked, 0, "no parameter was unused at any step")


if __name__ == "__main__":
    multirank.main()
