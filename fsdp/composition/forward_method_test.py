"""A registered non-forward entry point unshards and reshards like forward, with the right output.

``tp_models.SPEC`` is sharded with ``fully_shard`` on each block and the root. Its
``generate`` method (greedy decoding) calls the embedding, blocks and head itself, not
``forward``, so FSDP2's root hooks run for it only after
``register_fsdp_forward_method(model, "generate")``. On a rank-distinct prompt:

* after ``generate`` the same parameters are unsharded as after ``forward`` (the root
  keeps its own gathered, the blocks reshard), and while it runs the root's own
  parameters are gathered plain tensors;
* its collectives, in order, are those of one ``forward`` under ``no_grad`` with the
  blocks' repeated per token: the root's all-gather once (one call of the root), then
  each block's all-gather (kind and bytes) each time ``generate`` runs the blocks;
* the generated tokens equal an unsharded model's ``generate`` exactly, and the last
  logits within float32 tolerance.

Without the registration the root's parameters stay sharded DTensors inside
``generate``, and it fails.
"""

import torch
from torch.distributed.fsdp import register_fsdp_forward_method

from testing import multirank
from fsdp.composition.fixtures import tp_models, unsharded
from testing.fsdp import collective_count, compat, data, parity, wrapping

SPEC = tp_models.SPEC
NEW_TOKENS = 3


class ForwardMethodTest(multirank.MultiRankTestCase):
    def test_registered_generate_unshards_like_forward_fsdp2(self):
        model = wrapping.wrap_spec(SPEC, "fsdp2")
        register_fsdp_forward_method(model, "generate")
        prompt, _ = data.rank_batch(SPEC, seed=0, rank=self.rank, step=0)
        seen_in_norm = []
        model.norm.register_forward_pre_hook(
            lambda m, args: seen_in_norm.append(compat.is_dtensor(m.weight))
        )

        fresh = unsharded.gathered_names(model)
        forward_log = collective_count.StepLog()
        with torch.no_grad(), forward_log.recording():
            model(prompt)
        after_forward = unsharded.gathered_names(model)
        model.reshard()  # back to the fresh state, so generate starts where forward did
        seen_in_norm.clear()
        generate_log = collective_count.StepLog()
        with generate_log.recording():
            tokens, logits = model.generate(prompt, NEW_TOKENS)
        after_generate = unsharded.gathered_names(model)

        reference = SPEC.build(0).to(self.device)
        ref_tokens, ref_logits = reference.generate(prompt, NEW_TOKENS)
        self.assertEqual(fresh, [], "parameters not sharded after fully_shard")
        self.assertEqual(after_generate, after_forward, "unsharded after generate vs forward")
        self.assertNotIn("layers.0.wq.weight", after_generate, "a block was not resharded")
        self.assertEqual(
            seen_in_norm,
            [False] * NEW_TOKENS,
            "the root's norm weight was a sharded DTensor (True) inside generate",
        )
        # forward: the root's all-gather, then one per block. generate is one call of the
        # root, which gathers once and stays gathered, and runs the blocks once per token.
        once = forward_log.sequence()
        # One rank: FSDP2 issues no collectives, and generate must not either.
        gathers = 1 + len(SPEC.units) if self.world_size > 1 else 0
        self.assertLen(once, gathers, f"forward's collectives: {once}")
        expected = once[:1] + once[1:] * NEW_TOKENS
        self.assertEqual(
            generate_log.sequence(),
            expected,
            f"generate({NEW_TOKENS})'s collectives vs the root's and {NEW_TOKENS} x the blocks' "
            "of forward",
        )
        self.assertTrue(
            torch.equal(tokens.cpu(), ref_tokens.cpu()), f"tokens {tokens} vs {ref_tokens}"
        )
        parity.assert_tensors_close(logits, ref_logits, name="last logits")


if __name__ == "__main__":
    multirank.main()
