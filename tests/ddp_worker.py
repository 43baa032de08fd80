"""Run by ``test_training.py`` under ``torchrun``: trains the synthetic task's tiny model for one
epoch on every process and writes the digest of each rank's parameters to ``OUT/rank<R>.txt``."""

import hashlib
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
config = TrainConfig(epochs=1, lr=0.01, seed=0, device="cpu", progress=False)
Trainer(model, synthetic_task(), config, out / "run").fit()
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
(out / f"rank{dist.get_rank()}.txt").write_text(digest)
dist.destroy_process_group()
