"""torchrun with 2 CPU processes (gloo): one complete run folder, written by rank 0, that learned."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from braintumor.distributed import DistContext, init_distributed
from braintumor.rundir import RunDir


def test_single_process_context():
    ctx = init_distributed("cpu")
    assert ctx == DistContext() and ctx.is_main and not ctx.active
    assert ctx.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    assert ctx.local_batch(32) == 32
    assert sorted(ctx.shard(10, 4, seed=0, epoch=1)) == list(range(10))


def test_sharding_covers_every_image_once_per_epoch():
    shards = [DistContext(rank=r, world_size=3).shard(10, 4, seed=0, epoch=2) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # equal length on every rank (padded)
    assert set().union(*map(set, shards)) == set(range(10))
    assert DistContext(world_size=3).local_batch(32) == 11


def test_torchrun_two_processes(phantoms, tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "braintumor", "train", str(phantoms), "--model", "cnn", "--img-size", "64", "--epochs", "14",
           "--seed", "0", "--out", str(run)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    r = RunDir(run)
    meta = json.loads(r.metadata.read_text())
    assert meta["world_size"] == 2 and meta["status"] == "complete"
    for path in (r.config, r.history, r.metrics, r.best, r.last, r.curves, r.confusion, r.roc):
        assert path.is_file(), path
    # Rank 0 alone logs: one summary line per epoch, not two.
    epochs = [ln for ln in out.stdout.splitlines() if ln.startswith("epoch ")]
    assert len(epochs) == len(r.history.read_text().strip().splitlines()) - 1
    assert json.loads(r.metrics.read_text())["accuracy"] >= 0.9
