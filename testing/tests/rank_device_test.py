"""Self-test of testing/fsdp/rank_device.py: helpers default to the rank's device.

Outside a rank (this runner process, where the harness records nothing) the rank
device and every helper called without ``device`` raise instead of choosing CPU; with
an explicit device they work. Inside a rank the recorded device is ``self.device``,
and helpers called without ``device`` put their tensors there; a rank that records
another device (``meta``, which no fallback would pick) moves them along with it.
"""

from absl.testing import absltest
import torch

from testing import multirank
from testing.fsdp import data, equal_unit_stack, models, rank_device, training, wrapping

SPEC = models.get("nested_mlp")
NO_DEVICE = "no rank device recorded in this process"


def _helpers_without_device():
    """``{name: call}`` of helpers that take ``device`` and are given none."""
    return {
        "data.rank_batch": lambda: data.rank_batch(SPEC, seed=0, rank=0, step=0),
        "data.global_batch": lambda: data.global_batch(SPEC, seed=0, world_size=2, step=0),
        "wrapping.wrap_spec": lambda: wrapping.wrap_spec(SPEC, "fsdp2"),
        "training.reference_train": lambda: training.reference_train(SPEC, world_size=2),
        "equal_unit_stack.inputs": lambda: equal_unit_stack.inputs(0),
    }


class OutsideRankTest(absltest.TestCase):
    def test_rank_device_raises_naming_the_fix(self):
        with self.assertRaisesRegex(RuntimeError, NO_DEVICE + ".*pass device= explicitly"):
            rank_device.rank_device()

    def test_helpers_without_device_raise_instead_of_choosing_cpu(self):
        for name, call in _helpers_without_device().items():
            with self.subTest(name), self.assertRaisesRegex(RuntimeError, NO_DEVICE):
                call()

    def test_explicit_device_works_outside_a_rank(self):
        inputs, targets = data.rank_batch(SPEC, seed=0, rank=0, step=0, device="cpu")
        self.assertEqual((inputs.device.type, targets.device.type), ("cpu", "cpu"))
        model, losses = training.reference_train(SPEC, steps=1, world_size=2, device="cpu")
        self.assertEqual({p.device.type for p in model.parameters()}, {"cpu"})
        self.assertLen(losses, 1)


class InsideRankTest(multirank.MultiRankTestCase):
    def test_rank_device_is_the_tests_device(self):
        self.assertEqual(rank_device.rank_device(), self.device)

    def test_helpers_without_device_use_the_rank_device(self):
        inputs, _ = data.rank_batch(SPEC, seed=0, rank=self.rank, step=0)
        self.assertEqual(inputs.device, self.device)
        model = wrapping.wrap_spec(SPEC, "fsdp2")
        for name, p in model.named_parameters():
            self.assertEqual(p.device, self.device, name)
        reference, _ = training.reference_train(SPEC, steps=1)
        self.assertEqual({p.device for p in reference.parameters()}, {self.device})
        self.assertEqual(equal_unit_stack.inputs(self.rank).device, self.device)

    def test_helpers_follow_the_recorded_device(self):
        # On CPU the rank device and a CPU fallback agree; meta tells them apart.
        self.addCleanup(rank_device.record, rank_device.rank_device())
        rank_device.record("meta")
        inputs, targets = data.rank_batch(SPEC, seed=0, rank=self.rank, step=0)
        self.assertTrue(inputs.is_meta and targets.is_meta)
        self.assertTrue(equal_unit_stack.inputs(self.rank).is_meta)
        self.assertEqual(rank_device.resolve("cpu"), torch.device("cpu"))


if __name__ == "__main__":
    multirank.main()
