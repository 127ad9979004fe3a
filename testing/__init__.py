"""Shared testing library of fsdp-conformance: multi-rank harness and FSDP helpers.

Importing it checks that torch is importable and new enough, and otherwise
stops with one line naming the interpreter and what to install.
"""

import sys

MIN_TORCH = (2, 6)


def _require_torch() -> None:
    try:
        import torch
    except ImportError as e:
        sys.exit(
            f"fsdp-conformance: torch is not importable in {sys.executable} "
            f"({e}); install torch>=2.6 there or run through tools/bazel"
        )
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < MIN_TORCH:
        sys.exit(
            f"fsdp-conformance: torch {torch.__version__} in {sys.executable} "
            "is too old; torch>=2.6 is required"
        )


_require_torch()
