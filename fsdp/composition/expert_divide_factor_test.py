"""FSDP2's gradient divide factor makes expert-parallel gradients right (pytorch#160285).

``testing.fsdp.expert_parallel``'s MoE runs with expert parallelism over the ``ep``
ranks of an ``(edp, ep)`` mesh (2 experts: 2 x 2 at world size 4, 1 x 2 at 2): each
rank keeps one expert, ``fully_shard``-ed over ``mesh["edp"]`` (the ranks holding the
same expert); the dense layers are ``fully_shard``-ed over the world. A rank's expert
gradient already sums its ``ep`` group's tokens, so FSDP2's default, dividing by the
``edp`` group's size, leaves expert gradients ``ep`` times too large.

After one backward on rank-distinct data, every reduced gradient must equal
``world / factor`` times the unsharded model's gradient on the global batch (float32
tolerance), for:

* ``ep_corrected``: the experts' factor set to the world size, the dense default (the
  fix torch's MoE recipes use): gradients equal the reference's;
* ``default``: no factor set: experts ``ep`` times the reference, dense equal to it;
* ``sum``: factor 1 on the experts and the root: every gradient ``world`` times it.

Each under ``sum_only`` reductions (``set_force_sum_reduction_for_comms``; the only
way gloo takes a custom factor) and ``native`` ones (``PREMUL_SUM``/``AVG``; not on
CPU: gloo has no ``PREMUL_SUM``). With ``ep_corrected`` factors, 3 SGD steps also
match the reference.
"""

from absl.testing import parameterized

from testing import multirank
from testing.fsdp import compat, data, expert_parallel, meshes, params, parity, training
from testing.fsdp import wrapping

SPEC = expert_parallel.SPEC
STEPS = 3

# name -> (experts' divide factor (world, ep) or None, root's (world) or None): None is FSDP2's default.
_FACTORS = {
    "ep_corrected": (lambda world, ep: float(world), None),
    "default": (None, None),
    "sum": (lambda world, ep: 1.0, lambda world: 1.0),
}
_REDUCTIONS = ("sum_only", "native")


def _shard(mesh, device, factors, reduction, world):
    """The EP model: experts over ``edp``, the rest over the world, factors and reduction set."""
    model = expert_parallel.build(mesh, device)
    compat.fully_shard(model.experts[0], mesh=mesh["edp"])
    model = wrapping.wrap(model, "fsdp2", device=device)
    experts_factor, root_factor = factors
    ep = mesh.size(1)
    if experts_factor is not None:
        model.experts[0].set_gradient_divide_factor(experts_factor(world, ep))
    if root_factor is not None:
        model.set_gradient_divide_factor(root_factor(world))
    if reduction == "sum_only":
        compat.set_force_sum_reduction_for_comms(model, True)
    return model


def _factor_of(name, factors, world, ep):
    """The divide factor FSDP2 applies to parameter ``name`` under ``factors``."""
    experts_factor, root_factor = factors
    if name.startswith("experts."):
        return experts_factor(world, ep) if experts_factor else world // ep
    return root_factor(world) if root_factor else world


class ExpertDivideFactorTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _mesh(self):
        return meshes.expert_mesh(expert_parallel.NUM_EXPERTS, self.device.type)

    def _named(self, tensors, mesh):
        """``tensors`` keyed as the unsharded model names them (this rank's expert)."""
        ep_rank = mesh.get_local_rank("ep")
        return {expert_parallel.expert_name(n, ep_rank): t for n, t in tensors.items()}

    @parameterized.named_parameters(
        *[(f"{name}_{reduction}", name, reduction) for name in _FACTORS for reduction in _REDUCTIONS]
    )
    def test_expert_grads_scale_with_divide_factor_fsdp2(self, name, reduction):
        mesh = self._mesh()
        factors = _FACTORS[name]
        model = _shard(mesh, self.device, factors, reduction, self.world_size)
        inputs, targets = data.rank_batch(SPEC, seed=0, rank=self.rank, step=0, device=self.device)
        SPEC.loss_fn(model(inputs), targets).backward()
        actual = self._named(params.full_grads(model), mesh)  # collective: before any assertion

        _, reference = expert_parallel.reference_grads(world_size=self.world_size, device=self.device)
        ep = mesh.size(1)
        expected = {
            n: reference[n] * expert_parallel.scale(self.world_size, _factor_of(n, factors, self.world_size, ep))
            for n in actual
        }
        parity.assert_params_close(
            actual,
            expected,
            what="reduced gradient",
            context=f"factors={name} reduction={reduction} mesh (edp, ep) = {tuple(mesh.shape)}",
        )

    @parameterized.named_parameters(*[(reduction, reduction) for reduction in _REDUCTIONS])
    def test_ep_corrected_training_matches_reference_fsdp2(self, reduction):
        mesh = self._mesh()
        model = _shard(mesh, self.device, _FACTORS["ep_corrected"], reduction, self.world_size)
        losses = training.train(model, SPEC, steps=STEPS, device=self.device)
        reference, ref_losses = training.reference_train(SPEC, steps=STEPS, device=self.device)
        actual = self._named(params.full_params(model), mesh)  # collective: before any assertion
        expected = params.full_params(reference)
        training.assert_matches_reference(
            actual,
            {n: expected[n] for n in actual},
            losses,
            ref_losses,
            context=f"ep_corrected reduction={reduction} steps={STEPS}",
        )


if __name__ == "__main__":
    multirank.main()
