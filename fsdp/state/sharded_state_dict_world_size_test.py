"""A torch.distributed.checkpoint saved by N ranks loads into a model sharded over N/2.

Every rank of the world (4 on CPU) shards a model, trains it for two SGD steps
on rank-distinct data and writes its sharded state dict with ``dcp.save``. Then
the first half of the ranks load the checkpoint with ``dcp.load`` into a fresh,
differently initialized model sharded over a subgroup of just those ranks
(FSDP1 ``process_group``, FSDP2 a mesh made from that group); the other ranks
wait. The resharded model must have the trained full parameters and give the
trained model's outputs on rank-distinct inputs. The checkpoint is written
inside the test (no dependence on test order) under TEST_TMPDIR and removed.
"""

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from absl.testing import parameterized
from torch.distributed.device_mesh import DeviceMesh

from testing import dist_helpers, multirank
from testing.fsdp import api_cases, data, models, params, parity, state_dicts, training, wrapping

SPEC = models.get("nested_mlp")


class ShardedStateDictWorldSizeTest(multirank.MultiRankTestCase, parameterized.TestCase):
    @parameterized.named_parameters(*api_cases.API_CASES)
    def test_dcp_checkpoint_loads_at_half_the_world_size(self, api):
        self.assertGreaterEqual(self.world_size, 2, "needs at least 2 ranks to halve")
        trained = wrapping.wrap_spec(SPEC, api)
        training.train(trained, SPEC, steps=2, seed=0)
        inputs, _ = data.rank_batch(SPEC, seed=0, rank=self.rank, step=api_cases.EVAL_STEP)
        expected_params = params.full_params(trained)
        with torch.no_grad():
            expected_out = trained(inputs)
        loaders = list(range(self.world_size // 2))
        what = f"saved on {self.world_size} ranks, loaded on {len(loaders)}, api={api}"
        # new_group is a collective over the world: every rank enters it. The group is
        # destroyed at the end of the block (the harness then replaces the ranks).
        with (
            dist_helpers.new_group(loaders) as group,
            dist_helpers.shared_tempdir(prefix="ckpt-") as path,
        ):
            dcp.save(state_dicts.sharded_state_dict(trained, api), checkpoint_id=path)
            dist.barrier()
            if self.rank in loaders:
                if api == "fsdp1":
                    options = {"extra": {"process_group": group}}
                else:
                    options = {"mesh": DeviceMesh.from_group(group, self.device.type)}
                fresh = wrapping.wrap_spec(SPEC, api, seed=1, **options)
                state_dicts.dcp_load(fresh, api, path, process_group=group)
                parity.assert_params_close(
                    params.full_params(fresh), expected_params, rtol=0, atol=0, context=what
                )
                with torch.no_grad():
                    parity.assert_tensors_close(
                        fresh(inputs), expected_out, rtol=0, atol=0, name=f"output, {what}"
                    )


if __name__ == "__main__":
    multirank.main()
