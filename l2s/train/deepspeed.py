"""DeepSpeed wiring, apart from the loop: the config dict, engine creation, and the plain fp32
state dict that lets a checkpoint load into `Lip2Speech` without DeepSpeed.

The optimizer is always torch's AdamW handed to DeepSpeed as a client optimizer: DeepSpeed's own
fused / CPU Adam would compile C++ or CUDA ops at first use (1–2 minutes, and a compiler on every
node), and ZeRO partitions a client optimizer's state just the same.
"""

from __future__ import annotations

import torch
from torch import nn

from l2s.train.config import TrainConfig


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed config for a run: ZeRO stage, bf16 (on GPU by default), gradient clipping."""
    return {
        # Batches are length-bucketed, so a worker's batch may hold fewer than `batch_size` clips;
        # these sizes only feed DeepSpeed's own bookkeeping (we bring our own data loader).
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.batch_size * world_size,
        "gradient_clipping": cfg.grad_clip,
        "bf16": {"enabled": cfg.bf16},
        "zero_optimization": {
            "stage": cfg.zero_stage,
            "contiguous_gradients": True,
            # Overlapping reduction with backward needs a second CUDA stream.
            "overlap_comm": cfg.use_gpu,
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # the loop logs; DeepSpeed's own step lines would be noise
        "wall_clock_breakdown": False,
    }


def initialize(
    model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, world_size: int
):
    """A DeepSpeed engine over `model` (on the current device) with `optimizer` as client optimizer.

    Uses the process group Ray Train already set up (gloo on CPU, NCCL on GPU).
    """
    import deepspeed

    if not torch.cuda.is_available():
        # On CPU, DeepSpeed compiles its shared-memory collective op (~1 minute) when it sets up
        # communication, yet training calls only torch.distributed's collectives: that op serves
        # inference all-reduce alone. DeepSpeed keeps this per-process op table so it can be edited.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(cfg, world_size)
    )
    return engine


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The model's complete fp32 state dict on CPU, from the fp32 master weights (not the bf16
    copies) for ZeRO 0–3. A collective: every rank must call it, in the same order."""
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    state = {name: value.detach().cpu() for name, value in module.state_dict().items()}
    for name, param in module.named_parameters():
        full = safe_get_full_fp32_param(param)  # None when DeepSpeed keeps no separate master copy
        state[name] = (param if full is None else full).detach().float().cpu().clone()
    return {
        name: value.float() if value.is_floating_point() else value for name, value in state.items()
    }
