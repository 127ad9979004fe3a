"""torch.compile over FSDP2 with inductor trains like eager FSDP2, with eager's collectives.

The checks of ``compile_test.py`` (per-block and whole-model compilation of
``tp_models.SPEC`` under ``fully_shard``; no graph break inside a block; parity of
parameters and losses with eager FSDP2 and the unsharded reference over 3 SGD steps;
per-step collectives equal to eager's), with torch's default backend, inductor, which
generates code (C++ on CPU, so it needs a C++ compiler, and takes tens of seconds per
compile on CPU): a target tagged ``large``.
"""

from absl.testing import parameterized

from testing import multirank
from fsdp.composition.fixtures import compiling
from testing.fsdp import compat

BACKEND = "inductor"


class CompileInductorTest(multirank.MultiRankTestCase, parameterized.TestCase):
    # A cold inductor cache builds a precompiled header of torch's C++ API first:
    # minutes on a loaded 2-core host.
    timeout_s = 600

    def tearDown(self):
        compat.dynamo_reset()
        super().tearDown()

    @parameterized.named_parameters(*[(mode, mode) for mode in compiling.MODES])
    def test_compiled_matches_eager_fsdp2(self, mode):
        compiling.check_matches_eager(self, mode, BACKEND)


if __name__ == "__main__":
    multirank.main()
