"""Self-tests of testing/fsdp/parity.py failure messages (single process)."""

from absl.testing import absltest
import torch

from testing.fsdp import parity


class AssertParamsCloseTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.expected = {
            "a.weight": torch.ones(3, 4),
            "a.bias": torch.zeros(3),
            "b.weight": torch.full((2,), 2.0),
        }

    def _message(self, actual, **kwargs):
        with self.assertRaises(AssertionError) as cm:
            parity.assert_params_close(actual, self.expected, **kwargs)
        return str(cm.exception)

    def test_equal_and_within_tolerance_pass(self):
        parity.assert_params_close(dict(self.expected), self.expected, rank=0)
        near = {k: v + 1e-6 for k, v in self.expected.items()}
        parity.assert_params_close(near, self.expected, rank=0)

    def test_message_names_every_param_rank_and_diffs(self):
        actual = {k: v.clone() for k, v in self.expected.items()}
        actual["a.weight"][2, 1] += 0.5
        actual["b.weight"] *= 1.1
        msg = self._message(actual, rank=3, context="api=fsdp2")
        self.assertIn("rank 3: 2 of 3 parameters differ", msg)
        self.assertIn("float32: rtol=1e-05, atol=1e-05", msg)
        self.assertIn("[api=fsdp2]", msg)
        self.assertIn("a.weight: max abs diff 5.000e-01, max rel diff 5.000e-01", msg)
        self.assertIn(
            "1/12 elements out of tolerance; worst at (2, 1): actual 1.5 vs expected 1", msg
        )
        self.assertIn("b.weight: max abs diff 2.000e-01", msg)
        self.assertNotIn("a.bias", msg)

    def test_missing_extra_shape_none(self):
        actual = {"a.weight": torch.ones(4, 3), "a.bias": None, "c": torch.ones(1)}
        msg = self._message(actual, rank=0)
        self.assertIn("missing from actual: ['b.weight']", msg)
        self.assertIn("not in expected: ['c']", msg)
        self.assertIn("a.weight: shape (4, 3) != expected (3, 4)", msg)
        self.assertIn("a.bias: actual is None, expected is a tensor", msg)

    def test_dtype_tolerances(self):
        actual = {k: v * 1.01 for k, v in self.expected.items()}
        self._message(actual, rank=0)  # fp32: fails
        parity.assert_params_close(actual, self.expected, rank=0, dtype=torch.bfloat16)
        bf16 = {k: v.to(torch.bfloat16) for k, v in actual.items()}
        parity.assert_params_close(bf16, self.expected, rank=0)  # lower precision wins
        self.assertIn(
            "rtol=0.5",
            self._message({k: v * 3 for k, v in self.expected.items()}, rank=0, rtol=0.5, atol=0.0),
        )

    def test_nan_handling(self):
        nan = {k: v.clone() for k, v in self.expected.items()}
        nan["a.bias"][0] = float("nan")
        self.assertIn("a.bias: max abs diff inf", self._message(nan, rank=0))
        self.expected = nan
        parity.assert_params_close(nan, self.expected, rank=0)


class AssertTensorsCloseTest(absltest.TestCase):
    def test_tensor_list_and_floats(self):
        parity.assert_tensors_close(torch.ones(2), torch.ones(2), rank=0)
        with self.assertRaises(AssertionError) as cm:
            parity.assert_tensors_close([1.0, 2.0, 3.0], [1.0, 2.5, 3.0], name="loss", rank=1)
        msg = str(cm.exception)
        self.assertIn("rank 1: 1 of 1 losses differ", msg)
        self.assertIn("loss: max abs diff 5.000e-01", msg)
        self.assertIn("worst at (1,)", msg)
        with self.assertRaises(AssertionError) as cm:
            parity.assert_tensors_close(
                [torch.ones(2), torch.zeros(2)], [torch.ones(2), torch.ones(2)], name="out", rank=0
            )
        self.assertIn("out[1]: max abs diff 1.000e+00", str(cm.exception))


if __name__ == "__main__":
    absltest.main()
