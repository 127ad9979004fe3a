"""One wrapping API for FSDP1 (``FullyShardedDataParallel``) and FSDP2 (``fully_shard``).

:func:`wrap` wraps the named submodules ("units") deepest first, then the
root, and places the model on the rank's device:

    model = wrapping.wrap(spec.build(seed), "fsdp2", units=spec.units,
                          mixed_precision=torch.bfloat16)

Options common to both APIs are spelled once (``mixed_precision`` is a dtype
or a :class:`Precision`, ``cpu_offload`` a bool); API-specific options (``sharding_strategy`` and
``use_orig_params`` for FSDP1, ``reshard_after_forward`` for FSDP2) raise
``ValueError`` when given to the other API.  Anything else in ``extra`` goes
to the FSDP constructor / ``fully_shard`` unchanged.

A model on the meta device (``wrap_spec(..., init_device="meta")``) is not
moved: FSDP1 materializes it (``reset_parameters()`` per module, or
``extra={"param_init_fn": fn}``), FSDP2 gets ``to_empty(device=...)`` and
``reset_parameters()`` per module after sharding, on the sharded parameters
(values drawn per shard, so they differ from an eager model's: load a state
dict for those).
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from testing import dist_helpers
from testing.fsdp import compat, rank_device

APIS = ("fsdp1", "fsdp2")


@dataclasses.dataclass(frozen=True)
class Precision:
    """An API-neutral mixed-precision policy for :func:`wrap`.

    ``None`` fields take the API's own default, except ``reduce_dtype`` and
    FSDP1's ``buffer_dtype``, which default to ``param_dtype`` (as a plain dtype
    passed as ``mixed_precision`` does).

    Attributes:
      param_dtype: dtype the unit's parameters are cast to for forward/backward.
      reduce_dtype: dtype of the gradient reduction (and, for FSDP2, of the
        gradients accumulated without synchronization).
      cast_forward_inputs: cast the unit's floating-point forward inputs to
        ``param_dtype`` (FSDP1 default False, its root casts anyway; FSDP2
        default True).
      output_dtype: FSDP2 only: dtype the unit's floating-point outputs are cast to.
      buffer_dtype: FSDP1 only: dtype buffers are cast to.
    """

    param_dtype: Optional[torch.dtype] = None
    reduce_dtype: Optional[torch.dtype] = None
    cast_forward_inputs: Optional[bool] = None
    output_dtype: Optional[torch.dtype] = None
    buffer_dtype: Optional[torch.dtype] = None


MixedPrecisionOption = Union[None, torch.dtype, Precision]


def as_precision(option: MixedPrecisionOption) -> Optional[Precision]:
    """``mixed_precision`` as a :class:`Precision` (a dtype means param = reduce dtype)."""
    if option is None or isinstance(option, Precision):
        return option
    if isinstance(option, torch.dtype):
        return Precision(param_dtype=option, reduce_dtype=option)
    raise TypeError(
        f"mixed_precision must be a torch.dtype or wrapping.Precision, got {type(option).__name__}"
    )


def compute_dtype(option: MixedPrecisionOption) -> torch.dtype:
    """The dtype a model wrapped with ``mixed_precision=option`` computes in."""
    policy = as_precision(option)
    return policy.param_dtype if policy and policy.param_dtype else torch.float32


# The field of the other API a policy must leave unset, and the error when it is set.
_FOREIGN_FIELD = {
    "fsdp1": ("output_dtype", "output_dtype is an FSDP2 option (MixedPrecisionPolicy)"),
    "fsdp2": ("buffer_dtype", "buffer_dtype is an FSDP1 option (FSDP2 does not cast buffers)"),
}


def _torch_policy(api: str, option: MixedPrecisionOption):
    """``option`` as ``api``'s torch policy (MixedPrecision or MixedPrecisionPolicy), or None.

    Raises ValueError when ``option`` sets a field only the other API has.
    """
    policy = as_precision(option)
    if policy is None:
        return None
    foreign, message = _FOREIGN_FIELD[api]
    if getattr(policy, foreign) is not None:
        raise ValueError(message)
    kwargs = dict(
        param_dtype=policy.param_dtype, reduce_dtype=policy.reduce_dtype or policy.param_dtype
    )
    if policy.cast_forward_inputs is not None:
        kwargs["cast_forward_inputs"] = policy.cast_forward_inputs
    if api == "fsdp1":
        kwargs["buffer_dtype"] = policy.buffer_dtype or policy.param_dtype
        return compat.MixedPrecision(**kwargs)
    if policy.output_dtype is not None:
        kwargs["output_dtype"] = policy.output_dtype
    return compat.MixedPrecisionPolicy(**kwargs)


def _sorted_units(model: nn.Module, units: Sequence[str]):
    """Validates unit names and orders them deepest first (stable)."""
    names = list(dict.fromkeys(u for u in units if u))
    for name in names:
        model.get_submodule(name)  # raises AttributeError with a clear message
    return sorted(names, key=lambda n: -n.count("."))


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _strategy(value) -> "compat.ShardingStrategy":
    if value is None or isinstance(value, compat.ShardingStrategy):
        return value
    try:
        return compat.ShardingStrategy[str(value).upper()]
    except KeyError:
        raise ValueError(
            f"unknown sharding_strategy {value!r}; "
            f"use one of {[s.name for s in compat.ShardingStrategy]}"
        ) from None


def wrap(
    model: nn.Module,
    api: str,
    units: Optional[Sequence[str]] = None,
    *,
    device: Optional[Union[torch.device, str]] = None,
    mixed_precision: MixedPrecisionOption = None,
    unit_mixed_precision: Optional[Mapping[str, MixedPrecisionOption]] = None,
    cpu_offload: bool = False,
    sharding_strategy=None,
    use_orig_params: Optional[bool] = None,
    reshard_after_forward: Optional[Union[bool, int]] = None,
    mesh=None,
    extra: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """Shards ``model`` with FSDP1 or FSDP2 and returns the module to train.

    Args:
      model: an unwrapped module (on CPU or ``device``); FSDP2 modifies it in
        place, FSDP1 replaces the unit submodules with wrappers.
      api: ``"fsdp1"`` or ``"fsdp2"``.
      units: qualified submodule names wrapped separately before the root,
        e.g. ``spec.units``; ``None`` or ``()`` wraps only the root.
      device: default the rank's device; FSDP1's ``device_id`` (CPU too).
      mixed_precision: compute dtype (e.g. ``torch.bfloat16``); FSDP1 gets
        ``MixedPrecision(param_dtype, reduce_dtype, buffer_dtype)`` and FSDP2
        ``MixedPrecisionPolicy(param_dtype, reduce_dtype)`` of that dtype. A
        :class:`Precision` sets the dtypes and casts separately.
      unit_mixed_precision: per-unit override of ``mixed_precision``, keyed by
        unit name (``""`` for the root); a value of ``None`` means full precision.
      cpu_offload: FSDP1 ``CPUOffload(offload_params=True)`` / FSDP2
        ``CPUOffloadPolicy()``; ``ValueError`` on a CPU device.
      sharding_strategy: FSDP1 only; a ``ShardingStrategy`` or its name
        (``"FULL_SHARD"``, ``"SHARD_GRAD_OP"``, ``"NO_SHARD"``, ...).
      use_orig_params: FSDP1 only. reshard_after_forward: FSDP2 only (bool, or
        int for a smaller group).
      mesh: FSDP2 only; a DeviceMesh (default: 1-D over the world).
      extra: further keyword arguments for every FSDP constructor /
        ``fully_shard`` call.

    A model on the meta device is materialized on ``device`` (see the module
    docstring). Returns the FSDP1 root wrapper, or ``model`` itself for FSDP2.
    """
    device = rank_device.resolve(device)
    _check_options(
        api, device, cpu_offload, sharding_strategy, use_orig_params, reshard_after_forward, mesh
    )
    extra = dict(extra or {})
    ordered = _sorted_units(model, units or ())
    policies = _unit_policies(ordered, mixed_precision, unit_mixed_precision)
    for policy in policies.values():  # refuse another API's option before wrapping anything
        _torch_policy(api, policy)
    if api == "fsdp1":
        strategy = _strategy(sharding_strategy)
        return _wrap_fsdp1(
            model, ordered, device, policies, cpu_offload, strategy, use_orig_params, extra
        )
    return _wrap_fsdp2(
        model, ordered, device, policies, cpu_offload, reshard_after_forward, mesh, extra
    )


def _check_options(
    api, device, cpu_offload, sharding_strategy, use_orig_params, reshard_after_forward, mesh
) -> None:
    """Refuses an unknown API, offload without an accelerator, another API's options."""
    if api not in APIS:
        raise ValueError(f"api must be one of {APIS}, got {api!r}")
    if cpu_offload and device.type == "cpu":
        raise ValueError(
            "cpu_offload=True needs an accelerator device: torch's FSDP "
            "offload moves parameters between CPU and the device"
        )
    if api == "fsdp1":
        if reshard_after_forward is not None:
            raise ValueError(
                "reshard_after_forward is an FSDP2 option; use sharding_strategy for fsdp1"
            )
        if mesh is not None:
            raise ValueError("mesh is an FSDP2 option")
    elif sharding_strategy is not None or use_orig_params is not None:
        raise ValueError(
            "sharding_strategy/use_orig_params are FSDP1 options; "
            "use reshard_after_forward for fsdp2"
        )


def _unit_policies(
    units: Sequence[str],
    mixed_precision: MixedPrecisionOption,
    per_unit: Optional[Mapping[str, MixedPrecisionOption]],
):
    """``{unit name or "" (root): mixed-precision option}`` for every unit and the root."""
    per_unit = dict(per_unit or {})
    unknown = set(per_unit) - set(units) - {""}
    if unknown:
        raise ValueError(
            f"unit_mixed_precision names {sorted(unknown)}, which are not "
            f"units {list(units)} or the root ''"
        )
    return {name: per_unit.get(name, mixed_precision) for name in list(units) + [""]}


def _wrap_fsdp1(model, units, device, policies, cpu_offload, strategy, use_orig_params, extra):
    # torch >= 2.x refuses CPU modules without an explicit CPU device_id
    # ("FSDP needs a non-CPU accelerator device"), so always pass it.
    kwargs: Dict[str, Any] = {"device_id": device}
    if cpu_offload:
        kwargs["cpu_offload"] = compat.CPUOffload(offload_params=True)
    if strategy is not None:
        kwargs["sharding_strategy"] = strategy
    if use_orig_params is not None:
        kwargs["use_orig_params"] = use_orig_params
    kwargs.update(extra)
    # A meta model stays where it is: FSDP1 materializes it on device_id.
    if not cpu_offload and not is_meta(model):
        model = model.to(device)

    def unit_kwargs(name):
        policy = _torch_policy("fsdp1", policies[name])
        # An explicit mixed_precision in extra (kwargs) wins over the wrap option.
        return {"mixed_precision": policy, **kwargs} if policy is not None else kwargs

    for name in units:
        _set_submodule(model, name, compat.FSDP(model.get_submodule(name), **unit_kwargs(name)))
    return compat.FSDP(model, **unit_kwargs(""))


def _wrap_fsdp2(model, units, device, policies, cpu_offload, reshard, mesh, extra):
    if not compat.has_fsdp2():
        raise RuntimeError(f"FSDP2 (fully_shard) is not available in torch {torch.__version__}")
    if mesh is None:
        mesh = compat.init_device_mesh(device.type, (compat.world_size(),))
    kwargs: Dict[str, Any] = {"mesh": mesh}
    if cpu_offload:
        kwargs["offload_policy"] = compat.CPUOffloadPolicy()
    if reshard is not None:
        kwargs["reshard_after_forward"] = reshard
    kwargs.update(extra)
    meta = is_meta(model)
    if not meta:
        # Buffers are never offloaded, so move everything; fully_shard then
        # moves the parameter shards to CPU when offloading.
        model = model.to(device)

    def unit_kwargs(name):
        policy = _torch_policy("fsdp2", policies[name])
        # An explicit mp_policy in extra (kwargs) wins over the wrap option.
        return {"mp_policy": policy, **kwargs} if policy is not None else kwargs

    # An int reshard_after_forward makes torch build a post-forward mesh per unit.
    with dist_helpers.torch_made_groups("fully_shard"):
        for name in units:
            compat.fully_shard(model.get_submodule(name), **unit_kwargs(name))
        compat.fully_shard(model, **unit_kwargs(""))
    if meta:
        # fully_shard leaves meta DTensors: give them storage, then initialize.
        model.to_empty(device=device)
        for module in model.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
    return model


def is_meta(model: nn.Module) -> bool:
    """True if any parameter or buffer of ``model`` is on the meta device."""
    return any(t.is_meta for t in model.parameters()) or any(t.is_meta for t in model.buffers())


def wrap_spec(
    spec,
    api: str,
    *,
    seed: int = 0,
    units: Optional[Sequence[str]] = None,
    init_device: Optional[Union[torch.device, str]] = None,
    **wrap_options: Any,
) -> nn.Module:
    """Builds ``spec``'s model from ``seed`` and shards it with :func:`wrap`.

    The one-call form of ``wrap(spec.build(seed), api, spec.units, ...)``
    that test files use. ``units`` defaults to ``spec.units``; every other
    keyword goes to :func:`wrap` (``device``, ``mixed_precision``, ``extra``, ...).

    ``init_device`` is where the model is constructed (default CPU):
    ``"meta"`` builds it under ``torch.device("meta")`` without storage, and
    :func:`wrap` materializes it on ``device`` (meta-device initialization);
    an accelerator builds it there, drawing from that device's generator.
    """
    if init_device is None:
        model = spec.build(seed)
    else:
        with torch.device(init_device):
            model = spec.build(seed)
    return wrap(model, api, spec.units if units is None else units, **wrap_options)
