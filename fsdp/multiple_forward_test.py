"""An FSDP unit called twice in one forward trains exactly like unsharded training.

The ``shared`` submodule of the model runs twice per forward, so its sharded
parameters are gathered (and, under FULL_SHARD/reshard, freed) twice per step
and its gradient accumulates over both uses before one reduction. After three
SGD steps on rank-distinct data, the full parameters must equal a reference
trained without FSDP on all ranks' data.
"""

from absl.testing import parameterized

from testing import multirank
from testing.fsdp import api_cases
from testing.fsdp import models
from testing.fsdp import training

SPEC = models.get("shared_twice")


class MultipleForwardTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_unit_called_twice_matches_reference(self, api):
        training.check_against_reference(SPEC, api, steps=3)

    @parameterized.named_parameters(
        *api_cases.api_cases_with(
            fsdp1={"sharding_strategy": "SHARD_GRAD_OP"}, fsdp2={"reshard_after_forward": False}
        )
    )
    def test_unit_called_twice_without_reshard_matches_reference(self, api, options):
        training.check_against_reference(SPEC, api, steps=3, **options)


if __name__ == "__main__":
    multirank.main()
