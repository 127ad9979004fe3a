"""torch.compile over FSDP2 (backend aot_eager) trains like eager FSDP2, with eager's collectives.

``tp_models.SPEC`` (2 transformer blocks) is sharded with ``fully_shard`` on each block
and the root, then compiled with the cheap ``aot_eager`` backend (dynamo and AOT
autograd, no code generation) in two ways (``fsdp.composition.fixtures.compiling``):

* ``per_block``: each ``fully_shard``-ed block compiled in place (``block.compile()``);
* ``whole_model``: ``torch.compile(model)``.

Pass, after 3 SGD steps on rank-distinct batches:

* no graph break inside a block: every graph dynamo compiled holds whole blocks (a
  failure lists ``torch._dynamo.explain``'s break reasons); breaks at FSDP2's hooks,
  which torch keeps out of graphs, are expected;
* full parameters and per-step losses equal eager FSDP2's and the unsharded
  reference's (float32 tolerance);
* each step's collectives (kind, calls, bytes, per forward/backward/optimizer phase,
  seen at the dispatcher) equal eager FSDP2's.

Dynamo's caches are reset before and after each test: ranks serve many tests.
"""

from testing import multirank
from fsdp.composition.fixtures import compiling


class CompileTest(compiling.CompiledMatchesEagerCase):
    compile_backend = "aot_eager"


if __name__ == "__main__":
    multirank.main()
