"""Units and roots whose forward returns non-tensor values next to tensors train correctly.

In the ``dict_outputs`` model the ``block`` unit takes a ``None`` keyword
argument and returns a dict holding a tensor, ``None``, a tuple of an int and
a string, and a list of a tensor and ``None``; the root returns a dict with a
tensor, ``None``, an int, a string and a tuple ``(tensor, None)``, and the loss
uses two of the tensors. FSDP registers its backward hooks on the tensors
inside such outputs. With FSDP1 and FSDP2, the non-tensor values must come
back unchanged (``None`` stays ``None``, ints and strings equal) and three SGD
steps on rank-distinct data must match a model trained without FSDP on all
ranks' data.
"""

from absl.testing import parameterized

from testing import multirank
from testing.fsdp import api_cases, data, models, training

SPEC = models.get("dict_outputs")


class NonTensorOutputsTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_dict_outputs_with_none_train_like_reference(self, api):
        result = training.check_against_reference(SPEC, api, steps=3)
        inputs, _ = data.rank_batch(SPEC, seed=0, rank=self.rank, step=api_cases.EVAL_STEP)
        out = result["model"](inputs)
        self.assertEqual(
            sorted(out), ["aux", "count", "pair", "tag", "y"], f"api={api}: output keys"
        )
        self.assertIsNone(out["aux"], f"api={api}: None output")
        self.assertEqual(
            (out["count"], out["tag"]), (inputs.shape[0], "tanh"), f"api={api}: int and str outputs"
        )
        self.assertIsInstance(out["pair"], tuple, f"api={api}: tuple output")
        self.assertIsNone(out["pair"][1], f"api={api}: None inside a tuple output")
        self.assertEqual(tuple(out["pair"][0].shape), (inputs.shape[0],), f"api={api}")
        self.assertTrue(out["y"].requires_grad, f"api={api}: y lost its autograd graph")


if __name__ == "__main__":
    multirank.main()
