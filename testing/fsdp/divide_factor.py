"""The HSDP gradient divide factor check, shared by the default and SUM-only reduction tests.

:func:`check_scaling` wraps ``nested_mlp`` with FSDP2 on every mesh shape of one
kind (``testing.fsdp.meshes.SHAPE_KINDS``), sets ``set_gradient_divide_factor(F)``
for factors 1, the shard group size (when above 1) and 2.5 x world size, runs one
forward/backward on this rank's batch and asserts that the full gradients equal
``world_size / F`` times the gradient of a model without FSDP on the global batch.
"""

from typing import Dict

import torch

from testing.fsdp import compat, data, meshes, models, params, parity, rank_device, wrapping

SPEC = models.get("nested_mlp")


def reference_grads(world_size: int, device=None) -> Dict[str, torch.Tensor]:
    """Gradients of the global batch's mean loss, on a model without FSDP on ``device``.

    ``device`` defaults to the rank's device.
    """
    device = rank_device.resolve(device)
    model = SPEC.build(seed=0).to(device)
    inputs, targets = data.global_batch(SPEC, seed=0, world_size=world_size, step=0, device=device)
    SPEC.loss_fn(model(inputs), targets).backward()
    return {name: p.grad.detach().cpu() for name, p in model.named_parameters()}


def check_scaling(kind: str, *, rank: int, world_size: int, force_sum: bool, device=None) -> None:
    """Asserts the divide factor's scaling on every mesh of ``kind`` and every factor.

    ``force_sum`` calls ``set_force_sum_reduction_for_comms(True)`` before the
    factor is set. Every rank runs every shape and factor (each builds process
    groups) and the failures are raised together at the end. ``device`` defaults
    to the rank's device.
    """
    device = rank_device.resolve(device)
    reference = reference_grads(world_size, device)
    inputs, targets = data.rank_batch(SPEC, seed=0, rank=rank, step=0, device=device)
    reductions = ", SUM-only reductions" if force_sum else ""
    failures = parity.DeferredFailures()  # every rank runs every shape and factor
    for shape in meshes.shapes_of_kind(kind, world_size):
        factors = [1.0] + ([float(shape[1])] if shape[1] > 1 else []) + [2.5 * world_size]
        for factor in factors:
            model = wrapping.wrap_spec(
                SPEC,
                "fsdp2",
                device=device,
                mesh=meshes.hsdp_mesh(shape, device.type),
            )
            if force_sum:
                compat.set_force_sum_reduction_for_comms(model, True)
            compat.set_gradient_divide_factor(model, factor)
            SPEC.loss_fn(model(inputs), targets).backward()
            scale = world_size / factor
            expected = {name: g * scale for name, g in reference.items()}
            grads = params.full_grads(model)
            with failures.check(f"mesh {meshes.shape_name(shape)} factor {factor:g}"):
                parity.assert_params_close(
                    grads,
                    expected,
                    what="gradient",
                    context=(
                        f"mesh={meshes.shape_name(shape)} divide factor {factor:g}{reductions}: "
                        f"expected {scale:g} x the global-batch mean gradient"
                    ),
                )
    failures.raise_if_any()
