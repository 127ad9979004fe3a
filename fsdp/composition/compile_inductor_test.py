"""torch.compile over FSDP2 with inductor trains like eager FSDP2, with eager's collectives.

The checks of ``compile_test.py`` (per-block and whole-model compilation of
``tp_models.SPEC`` under ``fully_shard``; no graph break inside a block; parity of
parameters and losses with eager FSDP2 and the unsharded reference over 3 SGD steps;
per-step collectives equal to eager's), with torch's default backend, inductor, which
generates code (C++ on CPU, so it needs a C++ compiler, and takes tens of seconds per
compile on CPU): a target tagged ``large``.
"""

from testing import multirank
from fsdp.composition.fixtures import compiling


class CompileInductorTest(compiling.CompiledMatchesEagerCase):
    # A cold inductor cache builds a precompiled header of torch's C++ API first:
    # minutes on a loaded 2-core host.
    timeout_s = 600
    compile_backend = "inductor"


if __name__ == "__main__":
    multirank.main()
