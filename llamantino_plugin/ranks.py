"""Collectives across the training ranks, for the plugin's callbacks (router loss, trial pruning)."""

from __future__ import annotations


def process_group():
    """``torch.distributed`` when ranks run together, else None (one process)."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def collective_device(dist):
    """Where a collective's tensor lives: the rank's GPU under NCCL, the CPU under Gloo."""
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
