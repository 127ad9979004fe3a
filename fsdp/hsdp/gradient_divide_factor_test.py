"""A custom gradient divide factor scales HSDP gradients as documented (default reductions).

FSDP2 averages gradients over all data-parallel ranks by default; after
``set_gradient_divide_factor(F)`` on every ``fully_shard`` module the reduced
gradient is instead the sum of all ranks' gradients divided by ``F``, on a 2-D
mesh (reduce-scatter within a replica, all-reduce across replicas) as on a 1-D
one. pytorch#155903: the factor was applied to the reduce-scatter only and the
replica all-reduce still averaged, dividing by the number of replicas again.

For every mesh shape of the world size, in two methods by
``testing.fsdp.meshes.SHAPE_KINDS`` (``sharded_meshes``: 1 x 2 at world size 2,
1 x 3 at 3, 1 x 4 and 2 x 2 at 4, 1 x 8, 2 x 4 and 4 x 2 at 8;
``one_rank_per_shard_group``: N x 1) and factors
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
from fsdp.hsdp.fixtures import divide_factor


class HsdpGradientDivideFactorTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(*divide_factor.SHAPE_CASES)
    def test_gradient_divide_factor_scales_gradients(self, kind):
        divide_factor.check_scaling(kind, force_sum=False)


if __name__ == "__main__":
    multirank.main()
