"""FSDP2 over tensor parallelism trains like the unsharded model, each rank holding its chunk.

``tensor_parallel.SPEC`` (a one-block transformer) is split by torch's ``parallelize_module``
over the ``tp`` dimension of a ``(dp, tp)`` mesh (``meshes.dp_tp_shape``: 2 x 2 at
world size 4, 2 x 4 at 8, 1 x 2 at 2) with the ``sequence_parallel`` plan:
column-wise q/k/v and first feed-forward projections, row-wise output projections,
sequence-parallel norms, row-wise embedding, column-wise head. Then ``fully_shard``
shards each block and the root over ``dp``. Ranks of one ``tp`` group compute on
their data-parallel group's batch; groups' batches differ.

Pass:

* layout: every parameter is a DTensor on the ``(dp, tp)`` mesh with the placements
  ``tensor_parallel.expected_placements`` derives (``_StridedShard(0, split_factor=tp)``
  over ``dp`` where both split dim 0), and each rank's local shard equals, bit for
  bit, FSDP's dim-0 chunk of tensor parallelism's chunk of the full parameter;
* training: after 2 AdamW steps, every full parameter and the per-step losses equal
  a model trained without parallelism on the global batch (float32 tolerance), and
  the layout still holds;
* hybrid: the same training parity on a ``(replicate, shard, tp)`` mesh.
"""

import torch

from testing import multirank
from fsdp.composition.fixtures import tensor_parallel, tp_models
from testing.fsdp import meshes, params, parity, training

SPEC = tensor_parallel.SPEC
PLAN = "sequence_parallel"
STEPS = 2


def adamw(parameters):
    """AdamW with weight decay: its normalized update magnifies a wrong gradient's sign."""
    return torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.01)


class TensorParallelTest(multirank.MultiRankTestCase):
    def _mesh(self):
        return meshes.dp_tp_mesh(meshes.dp_tp_shape(self.world_size), self.device.type)

    def test_placements_and_local_shards_fsdp2(self):
        mesh = self._mesh()
        model = tensor_parallel.shard_2d(mesh, PLAN)
        gathered = params.full_params(model)  # collective: before any assertion
        full = params.full_params(SPEC.build(0))
        strided = [n for n in full if tp_models.tp_dim(n, PLAN) == 0]
        self.assertNotEmpty(strided, "the plan must split some parameter on dim 0 (strided)")
        context = f"mesh (dp, tp) = {tuple(mesh.shape)}"
        tensor_parallel.assert_layout(model, PLAN, mesh, full, context)
        parity.assert_params_close(gathered, full, rtol=0, atol=0, context=context)

    def test_training_matches_reference_fsdp2(self):
        mesh = self._mesh()
        self._check_training(mesh, meshes.dp_tp_shape(self.world_size)[0])

    def test_hsdp_training_matches_reference_fsdp2(self):
        # Half the world splits tensors two ways; the rest shards hybridly.
        shape = meshes.hybrid_shape(self.world_size // 2) + (2,)
        mesh = meshes.hsdp_tp_mesh(shape, self.device.type)
        self._check_training(mesh, self.world_size // 2)

    def _check_training(self, mesh, data_groups):
        model = tensor_parallel.shard_2d(mesh, PLAN)
        run = dict(steps=STEPS, optim_fn=adamw)
        losses = training.train(model, SPEC, data_rank=meshes.data_rank(mesh), **run)
        reference, ref_losses = training.reference_train(SPEC, world_size=data_groups, **run)
        actual = params.full_params(model)  # collective: before any assertion
        expected = params.full_params(reference)
        context = f"mesh {mesh.mesh_dim_names} = {tuple(mesh.shape)} steps={STEPS}"
        training.assert_matches_reference(actual, expected, losses, ref_losses, context=context)
        tensor_parallel.assert_layout(model, PLAN, mesh, actual, context + ", after training")


if __name__ == "__main__":
    multirank.main()
