"""FSDP training matches unsharded training under every sharding strategy.

A nested MLP is sharded with each strategy the API offers and trained for three
SGD-with-momentum steps on rank-distinct data; its full parameters and losses
must equal a model trained without FSDP on the concatenation of all ranks'
batches. FSDP1: FULL_SHARD, SHARD_GRAD_OP and NO_SHARD. FSDP2:
reshard_after_forward True and False (an int, which needs world size 4, is in
reshard_to_subgroup_test.py, so that this file runs on 2 devices). Each is checked
with nested units (every block its own unit, one unit nested inside another) and
flat (root only).
"""

from absl.testing import parameterized

from testing import multirank
from testing.fsdp import models
from testing.fsdp import training

SPEC = models.get("nested_mlp")

_CASES = []
for _wrapping, _units in (("nested", None), ("flat", ())):
    for _strategy in ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD"):
        _CASES.append(
            (
                f"{_strategy.lower()}_{_wrapping}_fsdp1",
                "fsdp1",
                _units,
                {"sharding_strategy": _strategy},
            )
        )
    for _reshard in (True, False):
        _CASES.append(
            (
                f"reshard_after_forward_{str(_reshard).lower()}_{_wrapping}_fsdp2",
                "fsdp2",
                _units,
                {"reshard_after_forward": _reshard},
            )
        )


class ParityTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(*_CASES)
    def test_matches_unsharded_training(self, api, units, options):
        training.check_against_reference(SPEC, api, units=units, steps=3, **options)


if __name__ == "__main__":
    multirank.main()
