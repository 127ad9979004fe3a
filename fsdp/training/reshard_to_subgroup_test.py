"""FSDP2 resharding to a smaller group after forward trains like unsharded training.

With ``reshard_after_forward=2`` (its target runs world size 4), each unit
keeps its parameters gathered over groups of 2 ranks between forward and
backward instead of freeing them entirely. Training must still equal a model
trained without FSDP on all ranks' data. The value must be a divisor of the
world size other than 1 and the size itself, so the test applies at even sizes
from 4 on (``valid_world_sizes`` in BUILD).
"""

from testing import multirank
from testing.fsdp import models
from testing.fsdp import training

SPEC = models.get("nested_mlp")


class ReshardToSubgroupTest(multirank.MultiRankTestCase):
    # Only non-root units reshard after forward, so this needs nested units.
    def test_matches_unsharded_training_reshard_after_forward_2_nested_fsdp2(self):
        training.check_against_reference(SPEC, "fsdp2", steps=3, reshard_after_forward=2)


if __name__ == "__main__":
    multirank.main()
