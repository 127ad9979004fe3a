"""Prefetch options gather the right unit at the right time, and training stays right.

Model: ``distinct_size_units``, units ``layers.0`` -> ``layers.1`` -> ``layers.2`` in
forward order (then the root's own parameters), of distinct byte sizes, so each
all-gather's and reduce-scatter's bytes name its unit. Each unit marks the start
of its forward and of its backward computation in the same ordered log as the
collectives (:mod:`testing.fsdp.collective_count`). On the second step of a run
(FSDP records the execution order it prefetches by during the first), the
sequence of layer-unit events per phase must equal the table below, derived from
what each option promises (root events are left out: the root's own gather and
reduce do not move with these options). Then the parameters must equal an
unsharded reference (two steps on the global batches).

Notation: ``AG x`` all-gather of unit x, ``RS x`` its reduce-scatter, ``F x`` /
``B x`` the start of x's forward / backward computation.

* No prefetch: every unit is gathered just before its own computation:
  forward ``AG 0, F 0, AG 1, F 1, AG 2, F 2``; backward (reverse order) gather,
  compute, reduce per unit.
* FSDP1 ``forward_prefetch=True``: each unit's pre-forward gathers the next one
  before its own computation (the root's pre-forward gathers ``layers.0``).
* FSDP1 ``BACKWARD_PRE``: each unit's pre-backward gathers the previous unit,
  before its own gradient computation; ``BACKWARD_POST``: after its gradient
  computation, before its own reduce-scatter; ``None``: only on demand.
* ``limit_all_gathers`` only bounds how many gathers are in flight (2 on an
  accelerator); the issue order must stay that of the options it is combined with.
* FSDP2 by default prefetches one unit in backward like ``BACKWARD_PRE`` and
  none in forward (forward overlap comes from the separate all-gather stream,
  not from issuing earlier).
* FSDP2 ``set_modules_to_forward_prefetch`` / ``set_modules_to_backward_prefetch``:
  the listed units are gathered in the setting unit's pre-forward / pre-backward.
* FSDP2 ``unshard(async_op=True)`` before forward: that unit is gathered first
  and not again at its own pre-forward.

At any world size above 1 these orders hold as written; a unit's collectives
are named by their bytes padded for the world (``distinct_size_units.unit_of``). On one
rank there is nothing to gather or scatter: FSDP1 runs NO_SHARD (no gather; the
reduce-scatter becomes an all-reduce, ``AR x``, at the same place) and FSDP2
issues no collective at all, so the expected order is the table's without
``AG`` and with ``RS`` made ``AR`` (FSDP1) or dropped (FSDP2)
(:func:`at_world_size`).

On CPU (gloo) collectives complete in issue order, so this checks issue order
and correctness; overlap under slow collectives is ``delayed_collectives_test``.
"""

import functools
from typing import Dict, List

from absl.testing import parameterized
from torch.distributed.fsdp import BackwardPrefetch

from testing import multirank
from testing.fsdp import collective_count, distinct_size_units, wrapping

SPEC = distinct_size_units.SPEC
FWD, BWD = collective_count.FORWARD, collective_count.BACKWARD


def _expand(short: str) -> List[str]:
    """``"AG 0, F 0"`` -> ``["all_gather layers.0", "forward layers.0"]``."""
    words = {
        "AG": "all_gather",
        "RS": "reduce_scatter",
        "AR": "all_reduce",
        "F": "forward",
        "B": "backward",
    }
    out = []
    for item in short.split(","):
        what, unit = item.split()
        out.append(f"{words[what]} layers.{unit}")
    return out


# Forward orders.
FWD_ON_DEMAND = "AG 0, F 0, AG 1, F 1, AG 2, F 2"
FWD_NEXT = "AG 0, AG 1, F 0, AG 2, F 1, F 2"  # each pre-forward gathers the next unit
FWD_NEXT_TWO = "AG 0, AG 1, AG 2, F 0, F 1, F 2"  # layers.0 gathers layers.1 and 2
FWD_ASYNC_2 = "AG 2, AG 0, F 0, AG 1, F 1, F 2"  # layers.2 unsharded before forward
# Backward orders (units run 2, 1, 0).
BWD_ON_DEMAND = "AG 2, B 2, RS 2, AG 1, B 1, RS 1, AG 0, B 0, RS 0"
BWD_PRE = "AG 2, AG 1, B 2, RS 2, AG 0, B 1, RS 1, B 0, RS 0"
BWD_POST = "AG 2, B 2, AG 1, RS 2, B 1, AG 0, RS 1, B 0, RS 0"
BWD_TWO_AHEAD = "AG 2, AG 1, AG 0, B 2, RS 2, B 1, RS 1, B 0, RS 0"  # layers.2 gathers 1 and 0
# FSDP1 with forward_prefetch: the autograd engine runs the most recently
# created ready node first, and FSDP1 reduces a unit when its flat parameter's
# gradient is accumulated through the views made at unshard time. A unit
# forward-prefetched by unit k got those views before unit k computed, so its
# reduce-scatter waits until unit k's backward computation has run: RS 2 comes
# after B 1, RS 1 after B 0. Gathers keep the order of the backward option.
BWD_ON_DEMAND_AFTER_FWD_PREFETCH = "AG 2, B 2, AG 1, B 1, RS 2, AG 0, B 0, RS 1, RS 0"
BWD_PRE_AFTER_FWD_PREFETCH = "AG 2, AG 1, B 2, AG 0, B 1, RS 2, B 0, RS 1, RS 0"

FSDP1_CASES = {
    # name: (wrap options, forward order, backward order)
    "backward_prefetch_pre": ({"backward_prefetch": "BACKWARD_PRE"}, FWD_ON_DEMAND, BWD_PRE),
    "backward_prefetch_post": ({"backward_prefetch": "BACKWARD_POST"}, FWD_ON_DEMAND, BWD_POST),
    "backward_prefetch_none": ({"backward_prefetch": None}, FWD_ON_DEMAND, BWD_ON_DEMAND),
    "forward_prefetch": (
        {"forward_prefetch": True, "backward_prefetch": None},
        FWD_NEXT,
        BWD_ON_DEMAND_AFTER_FWD_PREFETCH,
    ),
    "limit_all_gathers_on": (
        {"limit_all_gathers": True, "forward_prefetch": True, "backward_prefetch": "BACKWARD_PRE"},
        FWD_NEXT,
        BWD_PRE_AFTER_FWD_PREFETCH,
    ),
    "limit_all_gathers_off": (
        {"limit_all_gathers": False, "forward_prefetch": True, "backward_prefetch": "BACKWARD_PRE"},
        FWD_NEXT,
        BWD_PRE_AFTER_FWD_PREFETCH,
    ),
}


def at_world_size(short: str, api: str, world_size: int) -> str:
    """The order ``short`` (written for world sizes above 1) as ``api`` issues it at ``world_size``.

    On one rank nothing is gathered; FSDP1's NO_SHARD all-reduces where it would
    reduce-scatter, FSDP2 reduces nothing.
    """
    if world_size > 1:
        return short
    kept = []
    for item in short.split(","):
        what, unit = item.split()
        if what == "AG" or (what == "RS" and api == "fsdp2"):
            continue
        kept.append(f"{'AR' if what == 'RS' else what} {unit}")
    return ", ".join(kept)


def layer_sequence(log: collective_count.StepLog, phase: str, api: str) -> List[str]:
    """The log's events of ``phase`` that concern the layer units, in order."""
    name_of = functools.partial(distinct_size_units.unit_of, api=api)
    return [e for e in log.sequence(name_of, phase=phase) if "layers." in e]


def _fsdp1_options(options: Dict) -> Dict:
    extra = dict(options)
    if extra.get("backward_prefetch"):
        extra["backward_prefetch"] = BackwardPrefetch[extra["backward_prefetch"]]
    return extra


class PrefetchOrderTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _check(self, model, api, context, forward, backward, **record_options):
        log = distinct_size_units.record_step(model, self.device, trace=True, **record_options)
        for phase, short in ((FWD, forward), (BWD, backward)):
            short = at_world_size(short, api, self.world_size)
            observed = layer_sequence(log, phase, api)
            self.assertEqual(
                observed,
                _expand(short),
                f"rank {self.rank}: {phase} order of layer-unit gathers (AG), reduces (RS) "
                f"and computation (F/B) [{context}]\nexpected: {short}\nfull log:\n"
                + log.describe(),
            )
        distinct_size_units.check_parameters(model, self.device, context)

    @parameterized.named_parameters(*[(f"{name}_fsdp1", name) for name in FSDP1_CASES])
    def test_prefetch_order(self, case):
        options, forward, backward = FSDP1_CASES[case]
        model = wrapping.wrap_spec(
            SPEC,
            "fsdp1",
            sharding_strategy="FULL_SHARD",
            extra=_fsdp1_options(options),
        )
        self._check(model, "fsdp1", f"api=fsdp1 {options}", forward, backward)

    def test_implicit_prefetch_fsdp2(self):
        model = distinct_size_units.wrap_fsdp2(self.device, reshard=True)
        self._check(model, "fsdp2", "api=fsdp2 implicit prefetch", FWD_ON_DEMAND, BWD_PRE)

    def _check_explicit_prefetch(self, direction, layer, targets, forward, backward):
        """:meth:`_check` of FSDP2 layer ``layer`` set to prefetch ``targets`` (layer indices).

        ``direction`` is ``"forward"`` or ``"backward"``: which of FSDP2's
        ``set_modules_to_<direction>_prefetch`` is called.
        """
        model = distinct_size_units.wrap_fsdp2(self.device, reshard=True)
        setter = getattr(model.layers[layer], f"set_modules_to_{direction}_prefetch")
        setter([model.layers[i] for i in targets])
        context = f"layers.{layer} {direction}-prefetches " + ", ".join(
            f"layers.{i}" for i in targets
        )
        self._check(model, "fsdp2", f"api=fsdp2 {context}", forward, backward)

    def test_set_modules_to_forward_prefetch_fsdp2(self):
        self._check_explicit_prefetch("forward", 0, [1, 2], FWD_NEXT_TWO, BWD_PRE)

    def test_set_modules_to_backward_prefetch_fsdp2(self):
        self._check_explicit_prefetch("backward", 2, [1, 0], FWD_ON_DEMAND, BWD_TWO_AHEAD)

    def test_unshard_async_before_forward_fsdp2(self):
        model = distinct_size_units.wrap_fsdp2(self.device, reshard=True)
        handles = []

        def unshard_last(m):
            handles.append(m.layers[2].unshard(async_op=True))

        self._check(
            model,
            "fsdp2",
            "api=fsdp2 layers.2.unshard(async_op=True) before forward",
            FWD_ASYNC_2,
            BWD_PRE,
            before_forward=unshard_last,
        )
        self.assertLen(handles, 1)
        self.assertIsNotNone(handles[0], "unshard(async_op=True) returned no handle")


if __name__ == "__main__":
    multirank.main()
