"""Hybrid sharding (HSDP) trains like unsharded data parallel on every mesh shape.

The ``nested_mlp`` model is sharded hybridly on a ``(replicate, shard)`` mesh
and trained for 2 SGD steps on rank-distinct batches, under

* FSDP1 ``HYBRID_SHARD`` and ``_HYBRID_SHARD_ZERO2`` given ``device_mesh=`` a 2-D mesh,
  and ``HYBRID_SHARD`` given ``process_group=(intra, inter)`` groups;
* FSDP2 ``fully_shard(mesh=<2-D mesh>)``.

Mesh shapes come from ``testing.fsdp.meshes`` and follow the world size:

* ``sharded_meshes``: every shape whose shard groups have more than one rank
  (1 x 2 at world size 2, 1 x 3 at 3, 1 x 4 and 2 x 2 at 4, 1 x 8, 2 x 4 and
  4 x 2 at 8);
* ``one_rank_per_shard_group``: the degenerate N x 1 mesh (2 x 1, 3 x 1, 4 x 1,
  8 x 1), pure replication, what ``HYBRID_SHARD`` gives with one device per node.

World size 1 is not applicable (BUILD): its only mesh, 1 x 1, neither shards nor
replicates.

Pass: on every rank, the full parameters and the rank-averaged losses equal
those of the model trained without FSDP on the global batch (all ranks'
batches), and the full parameters are identical on all ranks. Because each
rank's data differs, a replica whose gradients miss the all-reduce across
replicas (pytorch#154888: skipped when one mesh dimension has size 1) or the
reduce-scatter within its replica trains on part of the data and diverges.

Found with torch 2.13 (CPU, gloo): FSDP1 on an N x 1 mesh fails. FSDP1 turns a
shard group of one rank into ``NO_SHARD`` ("FSDP is switching to use `NO_SHARD`
... since the world size is 1") and then all-reduces only within that
one-rank group, so replicas train apart.
"""

from absl.testing import parameterized

from testing import known_failures
from testing import multirank
from testing.fsdp import meshes, models, params, parity, training, wrapping

SPEC = models.get("nested_mlp")
STEPS = 2

# (case name, api, hybrid options for meshes.hsdp_wrap_options)
_CONFIGS = (
    ("hybrid_shard_fsdp1", "fsdp1", {"strategy": "HYBRID_SHARD"}),
    ("hybrid_shard_zero2_fsdp1", "fsdp1", {"strategy": "_HYBRID_SHARD_ZERO2"}),
    ("process_group_pair_fsdp1", "fsdp1", {"via": "process_group"}),
    ("fsdp2", "fsdp2", {}),
)
_FSDP1_N_BY_1 = known_failures.TorchBug(
    "pytorch#154888 (FSDP1 form)",
    "FSDP1 HYBRID_SHARD on an N x 1 mesh switches to NO_SHARD within the one-rank shard "
    "group and never all-reduces across replicas, so replicas train apart",
    affected=">=2.10",
    # N x 1: as many replicas as ranks; a missing replica all-reduce shows with 2 or more.
    world_sizes=">=2",
)

CASES = tuple(
    (f"{kind}_{name}", kind, api, hybrid)
    for kind in meshes.SHAPE_KINDS
    for name, api, hybrid in _CONFIGS
)


class HsdpParityTest(multirank.MultiRankTestCase, parameterized.TestCase):
    known_failures = {
        f"test_hsdp_matches_reference_one_rank_per_shard_group_{name}": _FSDP1_N_BY_1
        for name, api, _ in _CONFIGS
        if api == "fsdp1"
    }

    @parameterized.named_parameters(*CASES)
    def test_hsdp_matches_reference(self, kind, api, hybrid):
        reference, ref_losses = training.reference_train(SPEC, steps=STEPS, seed=0)
        expected = params.full_params(reference)
        failures = parity.DeferredFailures()  # every rank trains on every shape
        for shape in meshes.shapes_of_kind(kind, self.world_size):
            context = " ".join(
                [f"api={api}", f"mesh={meshes.shape_name(shape)}"]
                + [f"{k}={v}" for k, v in hybrid.items()]
            )
            model = wrapping.wrap_spec(
                SPEC,
                api,
                **meshes.hsdp_wrap_options(api, shape, self.device.type, **hybrid),
            )
            losses = training.train(model, SPEC, steps=STEPS, seed=0)
            actual = params.full_params(model)
            with failures.check(f"mesh {meshes.shape_name(shape)}, across ranks"):
                parity.assert_same_across_ranks(actual, name="full parameters", context=context)
            with failures.check(f"mesh {meshes.shape_name(shape)}, vs reference"):
                parity.assert_params_close(actual, expected, context=context)
                parity.assert_tensors_close(losses, ref_losses, name="loss", context=context)
        failures.raise_if_any()


if __name__ == "__main__":
    multirank.main()
