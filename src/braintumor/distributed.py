"""Multi-process training with ``torchrun``: DistributedDataParallel, gloo on CPU, NCCL on CUDA.

Launch the ordinary ``train`` command under torchrun; nothing else changes::

    torchrun --nproc_per_node=4 -m braintumor train data/nickparvar/Training --out runs/ddp
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
             --rdzv_endpoint=head-node:29500 -m braintumor train data/... --out /shared/runs/ddp

``batch_size`` stays the *global* batch: each of N processes takes ``ceil(batch_size / N)`` images per step, so a
config gives the same recipe on one CPU, one GPU or many. Rank 0 alone writes the run folder and logs.

Example:
    >>> from braintumor.distributed import init_distributed
    >>> ctx = init_distributed("cpu")       # no torchrun environment: a single process
    >>> ctx.world_size, ctx.is_main
    (1, True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over every process (identity in a single process)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        if self.backend == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``DistributedDataParallel(model)`` in a multi-process job, the model itself otherwise."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, broadcast_buffers=True)

    def shard(self, n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
        """This process's indices of an epoch (``DistributedSampler``: equal length on every rank)."""
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(range(n), num_replicas=self.world_size, rank=self.rank, shuffle=shuffle,
                                     seed=seed, drop_last=False)
        sampler.set_epoch(epoch)
        return list(sampler)

    def local_batch(self, batch_size: int) -> int:
        return max(1, -(-batch_size // self.world_size))


def init_distributed(device_type: str = "cpu") -> DistContext:
    """Join the process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local, backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
