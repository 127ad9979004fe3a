"""A custom gradient divide factor scales HSDP gradients as documented (default reductions).

FSDP2 averages gradients over all data-parallel ranks by default; after
``set_gradient_divide_factor(F)`` on every ``fully_shard`` module the reduced
gradient is instead the sum of all ranks' gradients divided by ``F``, on a 2-D
mesh (reduce-scatter within a replica, all-reduce across replicas) as on a 1-D
one. pytorch#155903: the factor was applied to the reduce-scatter only and the
replica all-reduce still averaged, dividing by the number of replicas again.

For every mesh shape of the world size, in two methods by
``testing.fsdp.meshes.SHAPE_KINDS`` (``sharded_meshes``: 1 x 4 and 2 x 2 at world
size 4, 1 x 2 at world size 2; ``one_rank_per_shard_group``: 4 x 1, 2 x 1) and factors
1 (a plain sum), the shard group size (when above 1: reduce-scatter by average,
then all-reduce by sum) and 2.5 x world size, ``nested_mlp`` runs one
forward/backward on rank-distinct data, with FSDP2's default reductions (a
pre-multiplied sum, ``ReduceOp.PREMUL_SUM``, or an average). Pass: every rank's
full gradients equal ``world_size / F`` times the gradient of a model trained
without FSDP on the global batch (the mean over all ranks' data).

gloo has no ``PREMUL_SUM``, so the CPU target is disabled; on CPU the same check
runs with SUM-only reductions in gradient_divide_factor_sum_comms_test.py.

FSDP1 has no public divide factor: its factors are fixed from the world size,
and ``register_comm_hook`` (the public way to change the reduction) raises for
hybrid strategies ("Communication hook is not supported for hybrid
strategies"). So this file tests FSDP2 only.
"""

from absl.testing import parameterized

from testing import multirank
from testing.fsdp import compat, data, meshes, models, params, parity, wrapping

SPEC = models.get("nested_mlp")
CASES = tuple((f"{kind}_fsdp2", kind) for kind in meshes.SHAPE_KINDS)


class HsdpGradientDivideFactorTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _reference_grads(self):
        """Gradients of the global batch's mean loss, on a model without FSDP."""
        model = SPEC.build(seed=0).to(self.device)
        inputs, targets = data.global_batch(
            SPEC, seed=0, world_size=self.world_size, step=0, device=self.device
        )
        SPEC.loss_fn(model(inputs), targets).backward()
        return {name: p.grad.detach().cpu() for name, p in model.named_parameters()}

    @parameterized.named_parameters(*CASES)
    def test_gradient_divide_factor_scales_gradients(self, kind):
        reference = self._reference_grads()
        inputs, targets = data.rank_batch(SPEC, seed=0, rank=self.rank, step=0, device=self.device)
        failures = parity.DeferredFailures()  # every rank runs every shape and factor
        for shape in meshes.shapes_of_kind(kind, self.world_size):
            factors = [1.0] + ([float(shape[1])] if shape[1] > 1 else []) + [2.5 * self.world_size]
            for factor in factors:
                model = wrapping.wrap_spec(
                    SPEC,
                    "fsdp2",
                    device=self.device,
                    mesh=meshes.hsdp_mesh(shape, self.device.type),
                )
                compat.set_gradient_divide_factor(model, factor)
                SPEC.loss_fn(model(inputs), targets).backward()
                scale = self.world_size / factor
                expected = {name: g * scale for name, g in reference.items()}
                grads = params.full_grads(model)
                with failures.check(f"mesh {meshes.shape_name(shape)} factor {factor:g}"):
                    parity.assert_params_close(
                        grads,
                        expected,
                        what="gradient",
                        context=(
                            f"mesh={meshes.shape_name(shape)} divide factor {factor:g}: "
                            f"expected {scale:g} x the global-batch mean gradient"
                        ),
                    )
        failures.raise_if_any()


if __name__ == "__main__":
    multirank.main()
