"""Self-tests of testing/fsdp model builders and data (single process, no ranks)."""

from absl.testing import absltest
from absl.testing import parameterized
import torch

from testing.fsdp import data, models


class BuilderTest(parameterized.TestCase):
    def test_registry_has_every_family(self):
        self.assertContainsSubset(
            {
                "nested_mlp",
                "shared_twice",
                "tied_transformer",
                "odd_transformer",
                "uneven_mlp",
                "batchnorm_mlp",
                "frozen_backbone",
            },
            set(models.names()),
        )
        with self.assertRaisesRegex(KeyError, "unknown model 'nope'"):
            models.get("nope")

    @parameterized.parameters(*models.names())
    def test_deterministic_and_rng_neutral(self, name):
        spec = models.get(name)
        torch.manual_seed(123)
        state = torch.get_rng_state()
        a = spec.build(seed=7)
        self.assertTrue(torch.equal(state, torch.get_rng_state()), "build changed global RNG")
        torch.manual_seed(999)  # a different global state must not matter
        b = spec.build(seed=7)
        c = spec.build(seed=8)
        sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
        self.assertEqual(list(sa), list(sb))
        for key in sa:
            self.assertTrue(torch.equal(sa[key], sb[key]), key)
        self.assertTrue(
            any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point()),
            "seed has no effect",
        )

    @parameterized.parameters(*models.names())
    def test_units_exist_and_step_runs(self, name):
        spec = models.get(name)
        model = spec.build(0)
        for unit in spec.units:
            model.get_submodule(unit)
        x, y = spec.make_batch(torch.Generator().manual_seed(0), 4)
        loss = spec.loss_fn(model(x), y)
        self.assertEqual(loss.dim(), 0)
        loss.backward()

    def test_family_properties(self):
        tied = models.get("tied_transformer").build(0)
        self.assertIs(tied.lm_head.weight, tied.embed.weight)
        self.assertIn("pos", dict(tied.named_buffers()))
        uneven = models.get("uneven_mlp").build(0)
        self.assertTrue(any(p.numel() < 4 for p in uneven.parameters()))
        self.assertTrue(all(d % 2 for p in uneven.parameters() for d in p.shape if d > 1))
        frozen = models.get("frozen_backbone").build(0)
        self.assertTrue(all(not p.requires_grad for p in frozen.backbone.parameters()))
        self.assertTrue(all(p.requires_grad for p in frozen.head.parameters()))
        self.assertTrue(models.get("batchnorm_mlp").local_batch_stats)

    def test_odd_transformer_sizes_expose_padding(self):
        spec = models.get("odd_transformer")
        model = spec.build(0)
        self.assertIs(model.lm_head.weight, model.embed.weight)
        self.assertEqual(spec.units, ("layers.0", "layers.1", "layers.2"))
        for name, p in model.named_parameters():
            self.assertEqual(p.shape[0] % 2, 1, f"{name}: first dimension {p.shape[0]} is even")
        unit_numels = [
            sum(p.numel() for p in model.get_submodule(u).parameters()) for u in spec.units
        ]
        root_numel = sum(
            p.numel() for n, p in model.named_parameters() if not n.startswith("layers.")
        )
        for numel in unit_numels + [root_numel]:
            self.assertEqual(
                numel % 2,
                1,
                f"unit element counts {unit_numels}, root "
                f"{root_numel}: FSDP1 would not pad an even one",
            )
        self.assertTrue(any(isinstance(m, torch.nn.LayerNorm) for m in model.modules()))
        # Batches follow a learnable rule: each row counts up by a fixed stride.
        x, y = spec.make_batch(torch.Generator().manual_seed(0), 4)
        self.assertEqual(tuple(x.shape), (4, 7))
        steps = (y - x) % 37
        self.assertTrue(torch.equal(steps, steps[:, :1].expand_as(steps)), steps)


class DataTest(absltest.TestCase):
    def test_rank_batches_deterministic_and_distinct(self):
        spec = models.get("nested_mlp")
        a0 = data.rank_batch(spec, seed=0, rank=0, step=0, device="cpu")
        again = data.rank_batch(spec, seed=0, rank=0, step=0, device="cpu")
        a1 = data.rank_batch(spec, seed=0, rank=1, step=0, device="cpu")
        b0 = data.rank_batch(spec, seed=0, rank=0, step=1, device="cpu")
        self.assertTrue(torch.equal(a0[0], again[0]))
        self.assertFalse(torch.equal(a0[0], a1[0]))
        self.assertFalse(torch.equal(a0[0], b0[0]))
        same = data.rank_batch(spec, seed=0, rank=1, step=0, same_across_ranks=True, device="cpu")
        self.assertTrue(torch.equal(a0[0], same[0]))

    def test_global_batch_is_rank_order_concatenation(self):
        spec = models.get("tied_transformer")
        x, y = data.global_batch(spec, seed=3, world_size=3, step=2, batch_size=2, device="cpu")
        parts = data.rank_batches(spec, seed=3, world_size=3, step=2, batch_size=2, device="cpu")
        self.assertEqual(x.shape[0], 6)
        for r, (xr, yr) in enumerate(parts):
            self.assertTrue(torch.equal(x[2 * r : 2 * r + 2], xr))
            self.assertTrue(torch.equal(y[2 * r : 2 * r + 2], yr))


if __name__ == "__main__":
    absltest.main()
