"""Forward passes without backward (eval mode, no_grad inference) give the reference's results.

A sharded tied-embedding transformer (buffers, tied ``embed``/``lm_head``) is
trained on rank-distinct data. Then:

* ``model.eval()`` plus ``torch.no_grad()`` inference, twice in a row, must give
  the outputs of a reference trained without FSDP on all ranks' data, and leave
  the parameters as they were;
* forwards in eval mode with autograd enabled whose outputs are dropped
  without a backward, between training steps, must not disturb training: after
  ``model.train()`` the remaining steps must match the uninterrupted reference.
"""

import torch
from absl.testing import parameterized

from testing import multirank
from testing.fsdp import api_cases, data, models, params, parity, training, wrapping

SPEC = models.get("tied_transformer")


class EvalTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def _inputs(self):
        inputs, _ = data.rank_batch(SPEC, seed=0, rank=self.rank, step=api_cases.EVAL_STEP)
        return inputs

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_no_grad_eval_after_training_matches_reference(self, api):
        model = wrapping.wrap_spec(SPEC, api)
        training.train(model, SPEC, steps=2, seed=0)
        reference, _ = training.reference_train(SPEC, steps=2, seed=0)
        trained = params.full_params(model)
        model.eval()
        reference.eval()
        inputs = self._inputs()
        with torch.no_grad():
            expected = reference(inputs)
            for attempt in range(2):
                out = model(inputs)
                self.assertFalse(out.requires_grad, "no_grad output requires grad")
                parity.assert_tensors_close(
                    out, expected, name=f"eval no_grad output #{attempt} api={api}"
                )
        parity.assert_params_close(
            params.full_params(model),
            trained,
            rtol=0,
            atol=0,
            context=f"inference changed parameters api={api}",
        )

    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_forward_without_backward_between_steps_matches_reference(self, api):
        model = wrapping.wrap_spec(SPEC, api)
        opt = training.default_optimizer(model.parameters())
        training.train(model, SPEC, steps=[0], optimizer=opt)
        model.eval()
        for _ in range(2):
            out = model(self._inputs())  # autograd on; no backward
            self.assertTrue(out.requires_grad)
            del out
        model.train()
        training.train(model, SPEC, steps=[1, 2], optimizer=opt)
        reference, _ = training.reference_train(SPEC, steps=3, seed=0)
        parity.assert_params_close(
            params.full_params(model),
            params.full_params(reference),
            context=f"3 steps with dropped eval forwards, api={api}",
        )


if __name__ == "__main__":
    multirank.main()
