"""Where `trainer fit` runs: CPU or CUDA (mixed precision there), one process or several
under torchrun (data parallel: each rank takes its share of every batch and
DistributedDataParallel averages the gradients).

    torchrun --standalone --nproc_per_node 2 -m trainer.cli fit --data ... --out run

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them this is one process.  On the
CPU the ranks talk over gloo, on CUDA over NCCL, one GPU per rank.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from common.devices import resolve_device


@dataclass
class Placement:
    device: torch.device
    rank: int = 0
    world: int = 1
    amp_dtype: torch.dtype | None = None  # autocast dtype on CUDA; None: full precision

    @property
    def main(self) -> bool:
        """Rank 0 evaluates, logs and writes files; the others only train."""
        return self.rank == 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, needed by float16 only (bfloat16 has float32's range)."""
        return torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's share of a batch (the batch order is the same on every rank)."""
        return indices[self.rank :: self.world]

    def wrap(self, module: nn.Module) -> nn.Module:
        if self.world == 1:
            return module
        # Some heads get no gradient in a step (a term with weight 0, an absent teacher).
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def in_sync(self, module: nn.Module) -> bool:
        """Whether every rank holds the same weights (they must, after each step)."""
        if self.world == 1:
            return True
        total = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().reshape(1)
        gathered = [torch.zeros_like(total) for _ in range(self.world)]
        dist.all_gather(gathered, total.to(self.device))
        return all(torch.allclose(g, gathered[0], rtol=1e-9, atol=0.0) for g in gathered)

    def from_main(self, *values: float) -> list[float]:
        """Rank 0's `values` on every rank (a collective where there are several): decisions
        taken from one rank's clock must be the same on all of them."""
        if self.world == 1:
            return [float(v) for v in values]
        shared = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.broadcast(shared, src=0)
        return shared.tolist()

    def close(self) -> None:
        """End the process group together, after a run that succeeded on this rank.

        Rank 0 works on after the others are done (it scores dev and writes the run), so the
        ranks meet at a barrier first: a rank that tore down its group and exited while rank 0
        still held the connection was seen to abort in gloo ("terminate called without an
        active exception"). After an error nothing collective is tried: the other ranks may be
        inside a step, where a barrier or a destroy would hang; torchrun ends them instead.
        """
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def has_bf16_units(device: torch.device) -> bool:
    """Whether bfloat16 matrix maths is fast on `device`: a CUDA GPU that supports it, or a
    CPU with AMX tiles or AVX-512 BF16 (there oneDNN runs bf16 matmuls at about twice the
    float32 rate; elsewhere bf16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def training_device(device: str, setting: str = "device") -> torch.device:
    """The torch device for a training `device` setting: "auto" (the GPU when torch sees one,
    else the CPU), "cpu", "cuda" or one GPU ("cuda:1"), by the rule of common.devices.  A GPU
    asked for and not there is an error, not a silent CPU run."""
    return torch.device(resolve_device(device, torch.cuda.is_available, setting, gpu_index=True))


def place(device: str = "auto", mixed_precision: bool = True) -> Placement:
    """Where this process trains: training_device(device), one GPU per rank under torchrun
    (its LOCAL_RANK), and the mixed precision of CUDA."""
    chosen = training_device(device, "[train] device")
    cuda = chosen.type == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    gpu = local if world > 1 or chosen.index is None else chosen.index
    where = torch.device("cuda", gpu) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(where)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    amp = None
    if cuda and mixed_precision:
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Placement(where, rank, world, amp)
