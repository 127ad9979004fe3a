"""Parameters smaller than the world size train and get gradients like unsharded ones.

The ``tiny_params`` model has a 1-row ``Linear(2, 1)`` (a 1x2 weight and a
1-element bias), a unit that holds only a 1-element parameter (``gain``) and
a 1-element root parameter: at world size 2 or more some ranks hold an empty
shard of them (FSDP2 shards dim 0; FSDP1 flattens a unit into fewer elements
than ranks). Run at world sizes 1, 2 and (CPU) 4, see BUILD.bazel.

* Gradients after one backward on rank-distinct data must match a model
  without FSDP on all ranks' data, and every 1-element parameter must get a
  non-zero gradient (pytorch#144045: FSDP2 at world size 1 gave a 1-element
  parameter of a non-root unit a gradient of 0). FSDP1 needs
  ``use_orig_params=True`` to expose per-parameter gradients.
* Three SGD steps must match the reference; at world size 1, where sharding
  changes nothing, bitwise.
"""

from absl.testing import parameterized

from testing import multirank
from testing.fsdp import api_cases, data, models, params, parity, training, wrapping

SPEC = models.get("tiny_params")
ONE_ELEMENT = ("gain.value", "head.bias", "offset")


class TinyParamsTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        *api_cases.api_cases_with(fsdp1={"use_orig_params": True}, fsdp2={})
    )
    def test_one_element_params_get_reference_grads(self, api, options):
        model = wrapping.wrap_spec(SPEC, api, **options)
        inputs, targets = data.rank_batch(SPEC, seed=0, rank=self.rank, step=0)
        SPEC.loss_fn(model(inputs), targets).backward()
        ref = SPEC.build(seed=0).to(self.device)
        inputs, targets = data.global_batch(SPEC, seed=0, world_size=self.world_size, step=0)
        SPEC.loss_fn(ref(inputs), targets).backward()
        grads = params.full_grads(model)  # collective: before any assert
        expected = params.full_grads(ref)
        what = f"api={api} world_size={self.world_size}"
        for name in ONE_ELEMENT:
            self.assertEqual(expected[name].numel(), 1, name)
            self.assertNotEqual(float(expected[name]), 0.0, f"reference {name}: zero gradient")
        parity.assert_params_close(grads, expected, what="gradient", context=what)

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_tiny_params_train_like_reference(self, api):
        exact = {"rtol": 0, "atol": 0} if self.world_size == 1 else {}
        training.check_against_reference(SPEC, api, steps=3, **exact)


if __name__ == "__main__":
    multirank.main()
