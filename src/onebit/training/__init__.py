"""One training loop for every experiment: tasks, trainer, checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint, write_json
from .runlock import RunDirBusy, run_dir_lock
from .tasks import BatchResult, ClassificationTask, DistillationTask, Task
from .trainer import TrainConfig, Trainer, TrainingDiverged, final_accuracy, resolve_device

__all__ = [
    "BatchResult", "ClassificationTask", "DistillationTask", "Task", "TrainConfig", "Trainer", "TrainingDiverged",
    "final_accuracy", "resolve_device", "load_checkpoint", "save_checkpoint", "write_json", "RunDirBusy",
    "run_dir_lock",
]
