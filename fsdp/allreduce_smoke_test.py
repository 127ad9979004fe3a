"""Temporary smoke test: one all_reduce across ranks, until testing/multirank.py lands."""

import multiprocessing
import os
import tempfile

from absl import flags
from absl.testing import absltest
import torch
import torch.distributed as dist

FLAGS = flags.FLAGS
# Moved to the harness (testing/) once it defines them.
flags.DEFINE_enum("device", "cpu", ["cpu", "cuda", "hpu", "xpu"], "Device to test on.")
flags.DEFINE_integer("world_size", 2, "Number of ranks.")
flags.DEFINE_enum("missing_device", "fail", ["fail", "skip"],
                  "What to do when the device is absent (skip is opt-in).")

_BACKENDS = {"cpu": "gloo", "cuda": "nccl", "hpu": "hccl", "xpu": "xccl"}
_TIMEOUT_S = 120


def _device_count(device):
  if device == "cpu":
    return None  # Any number of ranks can share the CPU.
  if device == "hpu":
    try:
      import habana_frameworks.torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      return 0
  module = getattr(torch, device, None)
  if module is None or not module.is_available():
    return 0
  return module.device_count()


def _rank_main(rank, world_size, device, store_path):
  store = dist.FileStore(store_path, world_size)
  dist.init_process_group(_BACKENDS[device], store=store, rank=rank,
                          world_size=world_size)
  if device == "cpu":
    where = torch.device("cpu")
  else:
    where = torch.device(device, rank)
    getattr(torch, device).set_device(where)
  value = torch.tensor([float(rank + 1)], device=where)
  dist.all_reduce(value)
  expected = world_size * (world_size + 1) / 2
  ok = value.item() == expected
  if not ok:
    print("rank %d: all_reduce gave %s, expected %s" % (rank, value.item(), expected),
          flush=True)
  dist.destroy_process_group()
  # Exit hard: torch 2.13 sometimes aborts in interpreter teardown after a clean run.
  os._exit(0 if ok else 1)


class AllReduceSmokeTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    count = _device_count(FLAGS.device)
    if count is not None and count < FLAGS.world_size:
      msg = "%s requested: %d devices visible; world size %d needs %d" % (
          FLAGS.device, count, FLAGS.world_size, FLAGS.world_size)
      if FLAGS.missing_device == "skip":
        self.skipTest(msg)
      self.fail(msg)

  def test_all_reduce_sum(self):
    tmpdir = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
    store_path = os.path.join(tmpdir, "store")
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_rank_main,
                    args=(rank, FLAGS.world_size, FLAGS.device, store_path))
        for rank in range(FLAGS.world_size)
    ]
    for p in procs:
      p.start()
    for p in procs:
      p.join(_TIMEOUT_S)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
      if p.is_alive():
        p.kill()
        p.join()
    self.assertEqual(hung, [], "ranks still running after %d s" % _TIMEOUT_S)
    self.assertEqual([p.exitcode for p in procs], [0] * FLAGS.world_size)


if __name__ == "__main__":
  absltest.main()
