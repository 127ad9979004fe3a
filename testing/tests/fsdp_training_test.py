"""Multi-rank self-tests of testing/fsdp: full_params, wrap options and parity.

Checks that helpers agree with an unwrapped reference for every model builder
under FSDP1 and FSDP2 (``uneven_mlp`` at world size 4: fsdp_training_ws4_test.py),
and that a real divergence (one rank's gradients scaled) fails with a message
naming parameter, rank and size of the error.
"""

from absl.testing import parameterized
import torch

from testing import multirank
from testing.fsdp import compat, data, models, params, parity, training, wrapping

APIS = wrapping.APIS


def _scale_grads_on_rank(rank, factor):
    """A before_step hook that scales this process's local gradients on ``rank``."""

    def hook(model, step):
        del step
        if torch.distributed.get_rank() == rank:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(factor)

    return hook


class FullParamsTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.product(api=APIS, name=models.names())
    def test_round_trip(self, api, name):
        spec = models.get(name)
        expected = params.full_params(spec.build(seed=5), buffers=True)
        model = wrapping.wrap_spec(spec, api, seed=5)
        parity.assert_params_close(
            params.full_params(model, buffers=True),
            expected,
            rtol=0,
            atol=0,
            context=f"{api} {name}",
        )

    @parameterized.parameters(dict(api="fsdp1", use_orig_params=True), dict(api="fsdp2"))
    def test_full_grads_match_reference(self, api, **options):
        spec = models.get("nested_mlp")
        model = wrapping.wrap_spec(spec, api, **options)
        training.train(model, spec, steps=1, optim_fn=lambda ps: torch.optim.SGD(ps, lr=0.0))
        ref = spec.build(0).to(self.device)
        x, y = data.global_batch(spec, seed=0, world_size=self.world_size, step=0)
        spec.loss_fn(ref(x), y).backward()
        # train() zeroes grads after its step; rerun one backward on the wrapped model.
        xr, yr = data.rank_batch(spec, seed=0, rank=self.rank, step=0)
        spec.loss_fn(model(xr), yr).backward()
        parity.assert_params_close(
            params.full_grads(model), params.full_grads(ref), what="gradient"
        )

    def test_full_grads_fsdp1_flat_params_rejected(self):
        spec = models.get("nested_mlp")
        model = wrapping.wrap(spec.build(0), "fsdp1")
        with self.assertRaisesRegex(ValueError, "use_orig_params=True"):
            params.full_grads(model)


class WrapOptionsTest(multirank.MultiRankTestCase, parameterized.TestCase):
    def test_wrong_api_options_rejected(self):
        build = models.get("nested_mlp").build
        with self.assertRaisesRegex(ValueError, "FSDP2 option"):
            wrapping.wrap(build(0), "fsdp1", reshard_after_forward=False)
        with self.assertRaisesRegex(ValueError, "FSDP1 options"):
            wrapping.wrap(build(0), "fsdp2", sharding_strategy="NO_SHARD")
        with self.assertRaisesRegex(ValueError, "unknown sharding_strategy"):
            wrapping.wrap(build(0), "fsdp1", sharding_strategy="HALF")
        with self.assertRaisesRegex(ValueError, "api must be one of"):
            wrapping.wrap(build(0), "ddp")
        with self.assertRaises(AttributeError):
            wrapping.wrap(build(0), "fsdp2", ["no.such.unit"])

    def test_precision_options(self):
        build = models.get("nested_mlp").build
        # (error pattern, api, a policy with the other API's option)
        for pattern, api, precision in (
            (
                "output_dtype is an FSDP2 option",
                "fsdp1",
                wrapping.Precision(torch.bfloat16, output_dtype=torch.float32),
            ),
            (
                "buffer_dtype is an FSDP1 option",
                "fsdp2",
                wrapping.Precision(torch.bfloat16, buffer_dtype=torch.float32),
            ),
        ):
            with self.assertRaisesRegex(ValueError, pattern):
                wrapping.wrap(build(0), api, mixed_precision=precision)
        with self.assertRaisesRegex(ValueError, "not units"):
            wrapping.wrap(
                build(0),
                "fsdp2",
                ["layers.0"],
                unit_mixed_precision={"layers.1": torch.bfloat16},
            )
        with self.assertRaisesRegex(TypeError, "torch.dtype or wrapping.Precision"):
            wrapping.wrap(build(0), "fsdp2", mixed_precision="bf16")
        self.assertEqual(wrapping.compute_dtype(None), torch.float32)
        self.assertEqual(wrapping.compute_dtype(torch.float16), torch.float16)
        # Per unit: layers.0 keeps the model-wide bf16/fp32 policy, layers.1 runs fp16,
        # the root none; FSDP1 exposes each wrapper's policy.
        policy = wrapping.Precision(torch.bfloat16, reduce_dtype=torch.float32)
        model = wrapping.wrap(
            build(0),
            "fsdp1",
            ["layers.0", "layers.1"],
            mixed_precision=policy,
            unit_mixed_precision={"layers.1": torch.float16, "": None},
        )
        got = {
            name: (m.mixed_precision.param_dtype, m.mixed_precision.reduce_dtype)
            for name, m in model.named_modules()
            if isinstance(m, compat.FSDP)
        }
        self.assertEqual(
            got,
            {
                "": (None, None),
                "_fsdp_wrapped_module.layers.0": (torch.bfloat16, torch.float32),
                "_fsdp_wrapped_module.layers.1": (torch.float16, torch.float16),
            },
        )

    def test_fsdp1_units_are_wrapped_nested(self):
        spec = models.get("nested_mlp")
        model = wrapping.wrap_spec(spec, "fsdp1")
        wrapped = [n for n, m in model.named_modules() if isinstance(m, compat.FSDP)]
        self.assertLen(wrapped, len(spec.units) + 1)

    def test_wrap_spec_meta_init_reaches_fsdp_on_meta(self):
        seen = []

        def init(module):
            own = list(module.parameters(recurse=False))
            if own:  # containers have none of their own
                seen.append(all(p.is_meta for p in own))
            module.to_empty(device=self.device, recurse=False)
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

        spec = models.get("nested_mlp")
        model = wrapping.wrap_spec(spec, "fsdp1", init_device="meta", extra={"param_init_fn": init})
        self.assertTrue(seen and all(seen), f"param_init_fn saw meta modules: {seen}")
        self.assertFalse(wrapping.is_meta(model))
        model = wrapping.wrap_spec(spec, "fsdp2", init_device="meta")
        for name, p in model.named_parameters():
            self.assertTrue(compat.is_dtensor(p) and not p.is_meta, name)
            self.assertEqual(p.to_local().device.type, self.device.type, name)

    @parameterized.product(api=APIS, dtype=(torch.bfloat16, torch.float16))
    def test_mixed_precision_parity(self, api, dtype):
        training.check_against_reference(models.get("nested_mlp"), api, mixed_precision=dtype)

    @parameterized.parameters(
        dict(api="fsdp1", sharding_strategy="SHARD_GRAD_OP"),
        dict(api="fsdp1", sharding_strategy="NO_SHARD"),
        dict(api="fsdp1", use_orig_params=True),
        dict(api="fsdp2", reshard_after_forward=False),
    )
    def test_strategy_parity(self, api, **options):
        # Tied weights are what makes use_orig_params interesting; the rest
        # use the cheaper MLP.
        name = "tied_transformer" if "use_orig_params" in options else "nested_mlp"
        training.check_against_reference(models.get(name), api, **options)

    @parameterized.parameters(*APIS)
    def test_cpu_offload_parity(self, api):
        if self.device.type == "cpu":
            with self.assertRaisesRegex(ValueError, "needs an accelerator"):
                wrapping.wrap(models.get("nested_mlp").build(0), api, cpu_offload=True)
            return
        training.check_against_reference(models.get("nested_mlp"), api, cpu_offload=True)


class ParityTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.product(api=APIS, name=models.names())
    def test_every_builder_matches_reference(self, api, name):
        training.check_against_reference(models.get(name), api, buffers=name != "batchnorm_mlp")

    @parameterized.parameters(*APIS)
    def test_scaled_grads_on_rank1_fail_readably(self, api):
        # Sharded: rank 1's shards diverge, so every rank sees mismatches.
        with self.assertRaises(AssertionError) as cm:
            training.check_against_reference(
                models.get("nested_mlp"),
                api,
                before_step=_scale_grads_on_rank(1, 1.5),
            )
        msg = str(cm.exception)
        self.assertRegex(
            msg,
            rf"^rank {self.rank}: \d+ of 16 parameters differ "
            r"\(float32: rtol=1e-05, atol=1e-05\) \[model=nested_mlp",
        )
        self.assertRegex(
            msg,
            r"\n  layers\.\d\.fc\d\.(weight|bias): max abs diff \d\.\d+e-\d\d, "
            r"max rel diff \d\.\d+e[-+]\d\d; \d+/\d+ elements out of tolerance",
        )
        self.assertNotIn("_fsdp_wrapped_module", msg)
        self.assertGreater(msg.count("max abs diff"), 2)  # every mismatch, not just the first

    def test_no_shard_divergence_fails_only_on_that_rank(self):
        # NO_SHARD all-reduces gradients before the hook, so after one step
        # only rank 1 holds different (replicated) parameters.
        def run():
            training.check_against_reference(
                models.get("nested_mlp"),
                "fsdp1",
                steps=1,
                sharding_strategy="NO_SHARD",
                before_step=_scale_grads_on_rank(1, 1.5),
            )

        if self.rank == 0:
            run()
        else:
            with self.assertRaisesRegex(AssertionError, r"^rank 1: 16 of 16 parameters differ"):
                run()


if __name__ == "__main__":
    multirank.main()
