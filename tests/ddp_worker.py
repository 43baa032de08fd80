"""Run by ``test_training.py`` under ``torchrun``: trains the synthetic task's tiny model for one
epoch on every process and writes, to ``OUT/rank<R>.json``, the digest of the rank's parameters,
its distributed evaluation of the validation split, its own evaluation of the whole split (after
the distributed one, which gives every rank rank 0's batch-norm statistics), and how many
validation samples it evaluated itself."""

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from test_training import synthetic_task, tiny_model

from onebit.training import TrainConfig, Trainer

out = Path(sys.argv[1])
dist.init_process_group("gloo")
torch.manual_seed(0)
model = tiny_model()
task = synthetic_task()
task.eval_batch_size = 24  # 64 validation images: batches of 24, 24 and 16, shared unevenly
config = TrainConfig(epochs=1, lr=0.01, seed=0, device="cpu", progress=False)
trainer = Trainer(model, task, config, out / "run")
trainer.fit()
evaluated = []
step = task.step


def counted_step(net, batch):
    evaluated.append(len(batch[1]))
    return step(net, batch)


task.step = counted_step
distributed = trainer.evaluate("val")
task.step = step
model.eval()
with torch.no_grad():
    results = [task.step(model, batch) for batch in task.eval_batches("val")]
whole = (float(sum(r.per_sample_loss.sum() for r in results)) / 64, sum(r.correct for r in results) / 64)
report = {"digest": hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest(),
          "distributed": distributed, "whole": whole, "evaluated": sum(evaluated)}
(out / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))
dist.destroy_process_group()
