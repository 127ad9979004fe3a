"""FSDP training matches unsharded training under every sharding strategy.

A nested MLP is sharded with each strategy the API offers and trained for three
SGD-with-momentum steps on rank-distinct data; its full parameters and losses
must equal a model trained without FSDP on the concatenation of all ranks'
batches. FSDP1: FULL_SHARD, SHARD_GRAD_OP and NO_SHARD. FSDP2:
reshard_after_forward True, False and an int (resharding to groups of 2 after
forward, which needs world size 4). Each is checked with nested units (every
block its own unit, one unit nested inside another) and flat (root only).
"""

from absl.testing import parameterized

from testing import multirank
from testing.fsdp import models
from testing.fsdp import training

SPEC = models.get("nested_mlp")

_CASES = []
for _wrapping, _units in (("nested", None), ("flat", ())):
    for _strategy in ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD"):
        _CASES.append((f"{_strategy.lower()}_{_wrapping}_fsdp1", "fsdp1", _units,
                       {"sharding_strategy": _strategy}))
    for _reshard in (True, False):
        _CASES.append((f"reshard_after_forward_{str(_reshard).lower()}_{_wrapping}_fsdp2",
                       "fsdp2", _units, {"reshard_after_forward": _reshard}))


class ParityTest(multirank.MultiRankTestCase, parameterized.TestCase):

    @parameterized.named_parameters(*_CASES)
    def test_matches_unsharded_training(self, api, units, options):
        training.check_against_reference(SPEC, api, units=units, steps=3,
                                         device=self.device, **options)

    # Only non-root units reshard after forward, so this needs nested units.
    @multirank.world_size(4)
    def test_matches_unsharded_training_reshard_after_forward_2_nested_fsdp2(self):
        training.check_against_reference(SPEC, "fsdp2", steps=3, device=self.device,
                                         reshard_after_forward=2)


if __name__ == "__main__":
    multirank.main()
