"""Multi-rank self-test of testing/fsdp at world size 4: uneven and empty shards.

``uneven_mlp`` has parameters of 5, 7, 11 and 3 rows and a 1-element
parameter, so at world size 4 some ranks hold padded or empty shards. Training
it under FSDP1 and FSDP2 must match an unwrapped reference, parameters and
buffers. Needs world size 4 (its BUILD target passes ``--world_size=4``).
"""

from absl.testing import parameterized

from testing import multirank
from testing.fsdp import models, training, wrapping


class UnevenWorldSize4Test(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.parameters(*wrapping.APIS)
    def test_uneven_world_size_4(self, api):
        training.check_against_reference(
            models.get("uneven_mlp"), api, device=self.device, buffers=True
        )


if __name__ == "__main__":
    multirank.main()
