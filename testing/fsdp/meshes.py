"""Two-dimensional (replicate x shard) meshes for hybrid sharding (HSDP) tests, and more.

Hybrid sharding splits the world into ``replicate`` groups of ``shard`` ranks:
parameters are sharded within a group (reduce-scatter of gradients) and
replicated across groups (all-reduce of the reduced shards). Rank ``r`` sits at
replica ``r // shard`` and shard position ``r % shard``, as
``init_device_mesh(device_type, (replicate, shard))`` lays it out.

    for shape in meshes.mesh_shapes(self.world_size):   # (1, 4), (2, 2), (4, 1)
        mesh = meshes.hsdp_mesh(shape, self.device.type)
        model = wrapping.wrap_spec(spec, "fsdp2", mesh=mesh)
        model = wrapping.wrap_spec(spec, "fsdp1", **meshes.fsdp1_hybrid_options(shape, ...))

The second half builds meshes with a tensor- or expert-parallel dimension:
``(dp, tp)`` (:func:`dp_tp_mesh`), ``(replicate, shard, tp)`` (:func:`hsdp_tp_mesh`)
and ``(edp, ep)`` (:func:`expert_mesh`).

Every function that creates process groups is a collective: call it on every
rank, with the same arguments, in the same order.
"""

from typing import Any, Dict, List, Tuple

import torch.distributed as dist

from testing import dist_helpers
from testing.fsdp import compat

# Names of the two mesh dimensions, outermost first, as every mesh here has them.
MESH_DIM_NAMES = ("replicate", "shard")

Shape = Tuple[int, int]

HYBRID_STRATEGIES = ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")

# Process groups and meshes made in this process, keyed by the default group
# they were made from: rank processes serve many tests, and gloo takes a
# noticeable time to connect each new group. They are the ranks' own
# (dist_helpers.pool_owned), so the harness does not count them as leaked.
_CACHE: Dict[Tuple[Any, ...], Any] = {}


def mesh_shapes(world_size: int) -> List[Shape]:
    """Every ``(replicate, shard)`` with ``replicate * shard == world_size``.

    Includes the degenerate ``(1, world_size)`` (pure sharding) and
    ``(world_size, 1)`` (pure replication); ordered by growing ``replicate``.
    World size 4 gives ``[(1, 4), (2, 2), (4, 1)]``; world size 2 gives
    ``[(1, 2), (2, 1)]``.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be positive, got {world_size}")
    return [(r, world_size // r) for r in range(1, world_size + 1) if world_size % r == 0]


def hybrid_shape(world_size: int, *, min_shard: int = 1) -> Shape:
    """The one shape a hybrid behaviour is tested on at ``world_size``.

    The shape closest to square with both dimensions above 1 (``(2, 2)`` at
    world size 4). At world sizes without one (2, primes): among the shapes with
    ``shard >= min_shard``, the one with the most replicas, since replicas are
    what HSDP adds over 1-D FSDP: ``(2, 1)`` at world size 2, or ``(1, 2)``
    with ``min_shard=2`` (FSDP1 tests use that: FSDP1 turns a shard group of
    one rank into ``NO_SHARD`` and drops the replica all-reduce, a failure of
    its own that ``fsdp/hsdp/parity_test.py`` reports).
    """
    candidates = [s for s in mesh_shapes(world_size) if s[1] >= min_shard]
    if not candidates:
        raise ValueError(f"no mesh shape at world size {world_size} has shard >= {min_shard}")
    both = [s for s in candidates if s[0] > 1 and s[1] > 1]
    if both:
        return min(both, key=lambda s: (abs(s[0] - s[1]), -s[0]))
    return max(candidates, key=lambda s: s[0])


def one_rank_per_shard_group(world_size: int) -> Shape:
    """``(world_size, 1)``: pure replication, each shard group a single rank.

    The degenerate mesh of pytorch#154888 (replica all-reduce skipped when a
    mesh dimension has size 1); a launcher gets it from ``HYBRID_SHARD`` with
    one device per node.
    """
    return (world_size, 1)


def sharded_shapes(world_size: int) -> List[Shape]:
    """The shapes of :func:`mesh_shapes` with ``shard > 1``, including ``(1, world_size)``."""
    return [s for s in mesh_shapes(world_size) if s[1] > 1]


# Named groups of shapes whose names do not depend on the world size, so test
# methods can be parameterized by them (the world size is known only on the ranks).
# Together they are every shape of mesh_shapes(); torch's size-1 special cases
# fail on the second group only, which keeps such a failure in its own method.
SHAPE_KINDS = ("sharded_meshes", "one_rank_per_shard_group")


def shapes_of_kind(kind: str, world_size: int) -> List[Shape]:
    """The shapes of ``kind`` (one of :data:`SHAPE_KINDS`) at ``world_size``.

    ``sharded_meshes``: :func:`sharded_shapes` (``(1, 4)``, ``(2, 2)`` at world
    size 4; ``(1, 2)`` at 2). ``one_rank_per_shard_group``:
    ``[one_rank_per_shard_group(world_size)]``.
    """
    if kind == "sharded_meshes":
        return sharded_shapes(world_size)
    if kind == "one_rank_per_shard_group":
        return [one_rank_per_shard_group(world_size)]
    raise ValueError(f"unknown shape kind {kind!r}; use one of {SHAPE_KINDS}")


def shape_name(shape: Shape) -> str:
    """``"2x2"`` for ``(2, 2)``: replicate x shard, for messages."""
    return f"{shape[0]}x{shape[1]}"


def coordinates(rank: int, shape: Shape) -> Shape:
    """``(replica index, shard index)`` of ``rank`` in a mesh of ``shape``."""
    _check(shape)
    return rank // shape[1], rank % shape[1]


def _check(shape: Shape) -> None:
    replicate, shard = shape
    world = compat.world_size()
    if replicate < 1 or shard < 1 or replicate * shard != world:
        raise ValueError(
            f"mesh shape {shape} (replicate x shard) does not cover world size {world}"
        )


def _key(*parts):
    return (id(dist.group.WORLD),) + parts


def hsdp_mesh(shape: Shape, device_type: str):
    """The 2-D ``DeviceMesh`` ``(replicate, shard)`` on ``device_type``; a collective.

    Dimension names are :data:`MESH_DIM_NAMES`, so ``mesh["shard"]`` and
    ``mesh["replicate"]`` give the 1-D sub-meshes. FSDP2 takes the mesh as
    ``fully_shard(mesh=...)``; FSDP1 as ``device_mesh=`` with a hybrid strategy
    (dimension 0 replicates, dimension 1 shards, as both APIs expect). Made
    once per process and shape.
    """
    _check(shape)
    key = _key("mesh", device_type, tuple(shape))
    if key not in _CACHE:
        with dist_helpers.pool_owned():
            _CACHE[key] = compat.init_device_mesh(
                device_type, tuple(shape), mesh_dim_names=MESH_DIM_NAMES
            )
    return _CACHE[key]


def hybrid_groups(shape: Shape) -> Tuple["dist.ProcessGroup", "dist.ProcessGroup"]:
    """``(intra, inter)`` process groups of this rank, made with ``dist.new_group``.

    ``intra`` holds the ``shard`` ranks of this rank's replica (FSDP1 shards
    within it); ``inter`` the ``replicate`` ranks at this rank's shard position
    (FSDP1 all-reduces across it). This is the pair FSDP1 takes as
    ``process_group=(intra, inter)``: groups made without a ``DeviceMesh``, as
    a launcher that predates meshes would. A collective (every rank creates
    every group); made once per process and shape.
    """
    _check(shape)
    key = _key("groups", tuple(shape))
    if key not in _CACHE:
        replicate, shard = shape
        me_replica, me_shard = coordinates(dist.get_rank(), shape)
        intra = inter = None
        # Every rank must call new_group for every group, in the same order.
        with dist_helpers.pool_owned():
            for replica in range(replicate):
                group = dist.new_group([replica * shard + s for s in range(shard)])
                if replica == me_replica:
                    intra = group
            for position in range(shard):
                group = dist.new_group([r * shard + position for r in range(replicate)])
                if position == me_shard:
                    inter = group
        _CACHE[key] = (intra, inter)
    return _CACHE[key]


def fsdp1_hybrid_options(
    shape: Shape, device_type: str, *, strategy: str = "HYBRID_SHARD", via: str = "device_mesh"
) -> Dict[str, Any]:
    """Keyword arguments for :func:`wrapping.wrap` that make FSDP1 shard hybridly.

    Args:
      shape: ``(replicate, shard)``.
      device_type: the ranks' device type (for the mesh).
      strategy: ``"HYBRID_SHARD"`` (reshard after forward) or
        ``"_HYBRID_SHARD_ZERO2"`` (keep parameters unsharded until backward ends).
      via: ``"device_mesh"`` (FSDP1's ``device_mesh=`` a 2-D mesh from
        :func:`hsdp_mesh`) or ``"process_group"`` (``process_group=(intra,
        inter)`` from :func:`hybrid_groups`).

    Returns:
      ``{"sharding_strategy": ..., "extra": {...}}``; every unit gets the same
      groups, as FSDP1 requires for hybrid strategies under manual wrapping.
    """
    if strategy not in HYBRID_STRATEGIES:
        raise ValueError(f"strategy must be one of {HYBRID_STRATEGIES}, got {strategy!r}")
    if via == "device_mesh":
        extra = {"device_mesh": hsdp_mesh(shape, device_type)}
    elif via == "process_group":
        extra = {"process_group": hybrid_groups(shape)}
    else:
        raise ValueError(f"via must be 'device_mesh' or 'process_group', got {via!r}")
    return {"sharding_strategy": strategy, "extra": extra}


def hsdp_wrap_options(
    api: str,
    shape: Shape,
    device_type: str,
    *,
    strategy: str = "HYBRID_SHARD",
    via: str = "device_mesh",
) -> Dict[str, Any]:
    """:func:`wrapping.wrap` keywords for hybrid sharding on ``shape`` under ``api``.

    FSDP1: :func:`fsdp1_hybrid_options` (``strategy``, ``via``); FSDP2:
    ``{"mesh": hsdp_mesh(shape, device_type)}`` (``strategy`` and ``via`` must be
    left at their defaults).
    """
    if api == "fsdp1":
        return fsdp1_hybrid_options(shape, device_type, strategy=strategy, via=via)
    if api != "fsdp2":
        raise ValueError(f"api must be 'fsdp1' or 'fsdp2', got {api!r}")
    if strategy != "HYBRID_SHARD" or via != "device_mesh":
        raise ValueError("strategy and via are FSDP1 options")
    return {"mesh": hsdp_mesh(shape, device_type)}


# --- Meshes with a tensor-parallel dimension -----------------------------------

# Dimension names of the (dp, tp) and (replicate, shard, tp) meshes: FSDP2 shards
# over "dp" (or replicates over "replicate" and shards over "shard"), tensor
# parallelism splits over "tp", the innermost (fastest-varying) dimension.
DP_TP_DIM_NAMES = ("dp", "tp")
HSDP_TP_DIM_NAMES = ("replicate", "shard", "tp")


def dp_tp_shape(world_size: int) -> Shape:
    """The ``(dp, tp)`` shape a 2-D behaviour is tested on: ``(2, world_size // 2)``.

    ``(2, 2)`` at 4 and ``(2, 4)`` at 8: two data-parallel groups, so FSDP2 both
    shards and averages across data, and the rest of the world splits tensors.
    At 2 it is ``(1, 2)`` (tensor parallelism inside one FSDP group of one rank).
    """
    if world_size < 2 or world_size % 2:
        raise ValueError(f"a (dp, tp) mesh needs an even world size, got {world_size}")
    return (2, world_size // 2) if world_size >= 4 else (1, 2)


def dp_tp_mesh(shape: Shape, device_type: str):
    """The 2-D ``DeviceMesh`` ``(dp, tp)``; a collective, made once per process and shape.

    Rank ``r`` sits at ``dp = r // tp``, ``tp = r % tp``; ``mesh["dp"]`` is what
    ``fully_shard`` takes, ``mesh["tp"]`` what ``parallelize_module`` takes.
    """
    return _named_mesh(tuple(shape), device_type, DP_TP_DIM_NAMES)


def hsdp_tp_mesh(shape: Tuple[int, int, int], device_type: str):
    """The 3-D ``DeviceMesh`` ``(replicate, shard, tp)``; a collective, made once.

    ``mesh["replicate", "shard"]`` is the 2-D mesh FSDP2 shards hybridly on,
    ``mesh["tp"]`` the tensor-parallel one; rank ``r`` has ``tp = r % tp``.
    """
    return _named_mesh(tuple(shape), device_type, HSDP_TP_DIM_NAMES)


def expert_mesh(ep: int, device_type: str):
    """The 2-D ``DeviceMesh`` ``(edp, ep)`` = ``(world // ep, ep)``; a collective, made once.

    Expert parallelism over ``ep`` (rank ``r`` holds expert ``r % ep``); the ranks
    holding the same expert form an ``edp`` group, over which ``fully_shard``
    shards that expert (``mesh["edp"]``).
    """
    world = compat.world_size()
    if world % ep:
        raise ValueError(f"world size {world} is not a multiple of ep={ep}")
    return _named_mesh((world // ep, ep), device_type, ("edp", "ep"))


def _named_mesh(shape: Tuple[int, ...], device_type: str, names: Tuple[str, ...]):
    world = compat.world_size()
    size = 1
    for dim in shape:
        size *= dim
    if len(shape) != len(names) or min(shape) < 1 or size != world:
        raise ValueError(
            f"mesh shape {shape} ({', '.join(names)}) does not cover world size {world}"
        )
    key = _key("named", device_type, shape, names)
    if key not in _CACHE:
        with dist_helpers.pool_owned():
            _CACHE[key] = compat.init_device_mesh(device_type, shape, mesh_dim_names=names)
    return _CACHE[key]


def data_rank(mesh) -> int:
    """This rank's index among the data-parallel groups of a mesh whose last dim is ``tp``.

    The ranks of one ``tp`` group compute on the same batch, so they share this
    index (``rank // tp``); :func:`testing.fsdp.data.rank_batch` takes it as ``rank``.
    """
    return dist.get_rank() // mesh.size(mesh.ndim - 1)
