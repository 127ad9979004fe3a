"""The device table: the one hand-edited list of the devices the suite runs on.

The table maps the device names the suite accepts (``cpu``, ``cuda``, ``hpu``,
``xpu``) to their process-group backend, Bazel tag, target defaults, host environment
and vendor listing tool, and counts the devices that are visible without initializing
an accelerator (so rank processes can still be forked).

Everything else is derived from it: the repository rule in
``tools/devices_repository.bzl`` writes the Starlark ``DEVICES`` (``@fsdp_devices``,
loaded by ``tools/devices.bzl``) from it, and tools that must not import torch
(tools/bazel, tools/device_lease.py, tools/remote, tools/report) load it through
``tools/device_table.py``. So it imports nothing outside the standard library at
module level.
"""

import dataclasses
import importlib
import os
from typing import Callable, Optional, Tuple

# The NVML-based count lets the controller count GPUs without creating a CUDA
# context, which would make forking rank processes unsafe.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")


@dataclasses.dataclass(frozen=True)
class DeviceKind:
    """One kind of device the suite can run on.

    Attributes:
        name: the device name used by ``--device`` and by torch (``cuda``...).
        backend: the torch.distributed backend for this device.
        tag: the tag the Bazel targets of this device carry (``--config=<name>``
            selects it).
        accelerator: each rank gets a device of its own.
        visible_devices_env: the variable that restricts which devices a process
            sees ("" when the device has none).
        env_prefixes: prefixes of the host environment variables the device's
            runtime and collectives read (``NCCL_``...).
        env_vars: exact names of further host variables they read.
        interop_tags: Bazel tags that CI filters of other projects understand.
        size: the Bazel ``size`` of the device's targets (``fsdp_test`` default).
        shard_count: the ``shard_count`` of the device's targets (``fsdp_test``
            default).
        list_command: the vendor command that lists the host's devices without
            initializing a runtime (no CUDA context), () when there is none.
        list_line: a regular expression matching, at the start of a line of that
            command's output, each line that names one device.
        plugin: a module that must be imported to make the device usable, if any.
        large_world_size: targets of this world size or more are tagged ``large``:
            the default Bazel run leaves them out, ``--config=large`` runs them.
    """

    name: str
    backend: str
    tag: str
    accelerator: bool = True
    visible_devices_env: str = ""
    env_prefixes: Tuple[str, ...] = ()
    env_vars: Tuple[str, ...] = ()
    interop_tags: Tuple[str, ...] = ()
    size: str = "medium"
    shard_count: int = 1
    list_command: Tuple[str, ...] = ()
    list_line: str = ""
    plugin: Optional[str] = None
    large_world_size: int = 8

    @property
    def is_accelerator(self) -> bool:
        """True for devices that get one device per rank."""
        return self.accelerator

    def count(self) -> int:
        """Returns how many devices of this kind are visible (cpu: unlimited, -1)."""
        if not self.is_accelerator:
            return -1
        return _count(self)

    def visible_count(self) -> int:
        """Like count(), but 0 when this torch cannot use the device at all."""
        try:
            return self.count()
        except _Unavailable:
            return 0

    def missing_reason(self, world_size: int) -> Optional[str]:
        """Returns a one-line reason why ``world_size`` ranks cannot run, or None."""
        if not self.is_accelerator:
            return None
        try:
            visible = self.count()
            note = ""
        except _Unavailable as e:
            visible, note = 0, f" ({e})"
        if visible >= world_size:
            return None
        return (
            f"{self.name} requested: {visible} devices visible; world size "
            f"{world_size} needs {world_size}{note}"
        )

    def torch_module(self):
        """Returns the ``torch.<name>`` module of an accelerator."""
        import torch

        if self.plugin:
            importlib.import_module(self.plugin)
        return getattr(torch, self.name)


class _Unavailable(Exception):
    """The device's torch support is not installed or not compiled in."""


def _count(kind: DeviceKind) -> int:
    import torch

    if kind.plugin:
        try:
            importlib.import_module(kind.plugin)
        except ImportError as e:
            raise _Unavailable(f"{kind.plugin} is not installed: {e}") from None
    module = getattr(torch, kind.name, None)
    counter: Optional[Callable[[], int]] = getattr(module, "device_count", None)
    if counter is None:
        raise _Unavailable(f"this torch build has no torch.{kind.name}")
    if kind.name == "cuda" and not torch.backends.cuda.is_built():
        raise _Unavailable(f"torch {torch.__version__} is a CPU-only build")
    return counter()


# Tag of accelerator targets with more than one rank. A scheduler or CI filter that knows
# nothing of this suite can keep them off single-device hosts
# (`--test_tag_filters=-requires-multi-device`); see tools/devices.bzl.
MULTI_DEVICE_TAG = "requires-multi-device"

# Variables every accelerator's runtime may need from the host: the vendor libraries.
_ACCELERATOR_ENV_VARS = ("LD_LIBRARY_PATH",)

DEVICES = {
    kind.name: kind
    for kind in (
        # Four gloo ranks or more share a small host's cores: on 2 cores the 19 CPU
        # targets at world size 4 took 208 s of the 480 s of test time a cold
        # `//fsdp/...` spent, which must finish in 150 s. They run under --config=large.
        DeviceKind("cpu", backend="gloo", tag="cpu", accelerator=False, large_world_size=4),
        DeviceKind(
            "cuda",
            backend="nccl",
            tag="gpu",
            visible_devices_env="CUDA_VISIBLE_DEVICES",
            env_prefixes=("NCCL_", "TORCH_NCCL_", "CUDA_", "NVSHMEM_", "TORCH_SYMM_MEM_"),
            env_vars=_ACCELERATOR_ENV_VARS,
            interop_tags=("requires-gpu-nvidia",),
            # One "GPU n: ..." line per GPU; MIG instances are indented lines below theirs.
            list_command=("nvidia-smi", "-L"),
            list_line=r"GPU \d+:",
        ),
        DeviceKind(
            "hpu",
            backend="hccl",
            tag="hpu",
            visible_devices_env="HABANA_VISIBLE_MODULES",
            env_prefixes=("HABANA_", "HCCL_", "PT_HPU_"),
            env_vars=_ACCELERATOR_ENV_VARS,
            list_command=("hl-smi", "-Q", "module_id", "-f", "csv,noheader"),
            list_line=r"\s*\d+",
            plugin="habana_frameworks.torch",
        ),
        DeviceKind(
            "xpu",
            backend="xccl",
            tag="xpu",
            visible_devices_env="ZE_AFFINITY_MASK",
            env_prefixes=("ZE_", "CCL_", "ONEAPI_"),
            env_vars=_ACCELERATOR_ENV_VARS,
        ),
    )
}


def get(name: str) -> DeviceKind:
    """Returns the DeviceKind called ``name``; raises ValueError naming the choices."""
    try:
        return DEVICES[name]
    except KeyError:
        raise ValueError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}") from None
