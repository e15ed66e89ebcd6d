"""What SCU needs from the process layout: which parameter layouts it can measure, and the step's all-reduce.

* One process, DDP, DeepSpeed ZeRO-1/2: every rank holds every parameter, so ParamBPT computed
  locally is already the global value; it is never summed over ranks.
* FSDP2 (DTensor parameters): handled inside `LoraPenalty.parts` (replicated + local shard sums).
* FSDP1 and DeepSpeed ZeRO-3 are refused: outside forward their ranks hold flat 1-D pieces
  (FSDP1, even with use_orig_params) or empty placeholders (ZeRO-3), so the factor matrices the
  penalty needs do not exist there.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from scu import ScuError


def check_layout(model: nn.Module) -> None:
    """Refuse parameter layouts the SCU penalty cannot be computed on."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        raise ScuError(
            "FSDP1 keeps parameters as flat 1-D shards, so the SCU penalty cannot see the LoRA matrices; "
            "use FSDP2 (accelerate fsdp_version: 2, or torch.distributed.fsdp.fully_shard) or DDP"
        )
    if any(hasattr(p, "ds_numel") for p in model.parameters()):  # set on parameters partitioned by ZeRO-3
        raise ScuError(
            "DeepSpeed ZeRO-3 parameters are empty outside forward, so the SCU penalty cannot be computed; "
            "use ZeRO stage 1 or 2, DDP, or FSDP2"
        )


def check_loop_layout(model: nn.Module) -> None:
    """`scu train` keeps whole parameters on every rank: its clipping, checkpoints and adapter files assume it."""
    check_layout(model)
    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise ScuError(
            "scu train runs in one process or under DDP (torchrun / accelerate launch without FSDP); "
            "for FSDP2 use scu.torch.hf.SCUTrainer or the SCU loop API (docs/integrations.md)"
        )


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum_(t: Tensor) -> Tensor:
    """Sum `t` over all ranks in place (no-op in one process). Every rank gets the same bits back."""
    if world_size() > 1:
        dist.all_reduce(t)
    return t
