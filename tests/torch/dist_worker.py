"""Run by tests/torch/test_distributed.py under `torchrun --standalone --nproc_per_node 2` (CPU, gloo).

    python dist_worker.py trainer OUT   SCUTrainer under DDP
    python dist_worker.py fsdp2 OUT     a custom loop with `SCU` on a model sharded by fully_shard (FSDP2)

Each rank writes OUT/rank{r}.pt with its per-step SCU rows and the all-reduced gradients of
CHECK_STEP; the test compares them with each other and with a one-process run of the same global
batch (`trainer_run` / `custom_loop` with world = 1, called in the test process).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from hf_common import Capture, tiny_peft, token_dataset, trainer_args
from transformers import TrainerCallback

from scu import ScuError
from scu.torch.distributed import check_loop_layout
from scu.torch.hf import SCU, SCUTrainer

STEPS, CHECK_STEP, ACCUMULATION = 4, 3, 2
SCU_CONFIG = {"target_s": 0.1}


class Rows(TrainerCallback):
    def __init__(self) -> None:
        self.trainer, self.rows = None, []

    def on_step_end(self, args, state, control, **kwargs):
        self.rows.append(dict(self.trainer.scu.last))


def trainer_run(out: Path, per_device_batch: int) -> dict:
    """SCUTrainer for STEPS steps; each optimizer step sees rows [8 (k-1), 8 k) of the dataset in total."""
    rows, cap = Rows(), Capture({CHECK_STEP})
    args = trainer_args(out, per_device_train_batch_size=per_device_batch, gradient_accumulation_steps=ACCUMULATION,
                        max_steps=STEPS, learning_rate=3e-3, **({"ddp_backend": "gloo"} if dist.is_initialized() else {}))
    trainer = SCUTrainer(model=tiny_peft(), train_dataset=token_dataset(), args=args, callbacks=[cap], scu=SCU_CONFIG)
    rows.trainer, cap.scu = trainer, trainer.scu
    trainer.add_callback(rows)  # after SCU's own step-end callback, so it sees this step's numbers
    trainer.train()
    trainer.save_model(str(out / "final"))  # every rank calls it; only the main process may write
    wrapped = type(trainer.model_wrapped).__name__
    return {"rows": rows.rows, "grads": cap.grads[CHECK_STEP], "wrapped": wrapped, "world": trainer.args.world_size,
            "writer": trainer.args.should_save, "law": trainer.scu.config.law}


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def fsdp_model():
    """DoRA + modules_to_save: the LoRA/DoRA part is gathered, lm_head's copy is summed per shard."""
    return tiny_peft(use_dora=True, modules_to_save=["lm_head"])


def custom_loop(model, world: int, rank: int, micro_batch: int = 2) -> dict:
    """The documented three-line SCU API in a hand-written loop with gradient accumulation.

    Each rank's loss is its CE sum over the step's global token count times `world`, so the
    gradient averaging of DDP/FSDP leaves the token-weighted mean over the global batch."""
    ds = token_dataset()
    ids_all, labels_all = torch.tensor(ds["input_ids"]), torch.tensor(ds["labels"])
    scu = SCU(model, tokens_per_epoch=int((labels_all[:, 1:] != -100).sum()), config=SCU_CONFIG)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    per_step = micro_batch * world * ACCUMULATION
    rows, grads = [], {}
    for step in range(1, STEPS + 1):
        start = (step - 1) * per_step
        step_tokens = int((labels_all[start : start + per_step, 1:] != -100).sum())
        nats, tokens = torch.zeros(()), torch.zeros(())
        for micro in range(ACCUMULATION):
            lo = start + (micro * world + rank) * micro_batch
            ids, labels = ids_all[lo : lo + micro_batch], labels_all[lo : lo + micro_batch]
            logits = model(input_ids=ids).logits.float()
            ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")
            loss = ce * world / step_tokens
            if micro == 0:
                loss = loss + scu.penalty()  # line 1
            loss.backward()
            nats += ce.detach()
            tokens += (labels[:, 1:] != -100).sum()
        if step == CHECK_STEP:
            grads = {n: _full(p.grad).detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        opt.step()
        opt.zero_grad(set_to_none=True)
        rows.append(scu.step(ce_sum=nats, tokens=tokens))  # line 2 (line 3: log the returned dict)
    return {"rows": rows, "grads": grads}


def refusal(check, *args) -> str:
    try:
        check(*args)
    except ScuError as e:
        return str(e)
    return "accepted"


def main(mode: str, out: Path) -> None:
    if mode == "trainer":
        result = trainer_run(out, per_device_batch=2)
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

        dist.init_process_group("gloo")
        model = fsdp_model()
        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        lora_a = next(p for n, p in model.named_parameters() if "lora_A" in n)
        fsdp1 = FullyShardedDataParallel(tiny_peft(), use_orig_params=True, device_id=torch.device("cpu"))
        result = {**custom_loop(model, dist.get_world_size(), dist.get_rank()), "wrapped": type(lora_a).__name__,
                  "fsdp1": refusal(SCU, fsdp1, 100), "scu_train": refusal(check_loop_layout, model)}
    rank = dist.get_rank()
    torch.save(result, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
