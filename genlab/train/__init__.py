"""genlab.train: pretraining machinery (Handbook III, pretraining recipes).

optim (AdamW param groups, Loshchilov & Hutter 2019), schedule (warmup + cosine, GPT-3/Chinchilla),
checkpoint (atomic, resumable), trainer (the loop: accumulation, clipping, eval, metrics.jsonl, resume).

    python -m pytest -q tests/train
"""

from genlab.train.checkpoint import CheckpointState, latest_checkpoint, load_checkpoint, save_checkpoint
from genlab.train.optim import build_optimizer, param_groups
from genlab.train.schedule import Schedule, lr_at
from genlab.train.trainer import TrainConfig, TrainResult, evaluate, train

__all__ = ["CheckpointState", "Schedule", "TrainConfig", "TrainResult", "build_optimizer", "evaluate",
           "latest_checkpoint", "load_checkpoint", "lr_at", "param_groups", "save_checkpoint", "train"]
