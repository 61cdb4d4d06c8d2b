"""Learning-rate schedule of the official recipe: linear warmup, then a half-cycle cosine.

The official `util/lr_sched.py` sets the rate every iteration at the fractional epoch
`epoch + it / iters_per_epoch`; this is the same function, pure, so tests can pin its shape.
"""

from __future__ import annotations

import math


def peak_lr(blr: float, batch_size: int) -> float:
    """The linear scaling rule: lr = blr * effective batch / 256."""
    return blr * batch_size / 256


def lr_at(epoch: float, *, lr: float, min_lr: float, warmup_epochs: float, epochs: int) -> float:
    """The rate at fractional `epoch` (0 <= epoch <= epochs)."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    decay_epochs = epochs - warmup_epochs
    if decay_epochs <= 0:  # the whole run is warmup
        return lr
    progress = min((epoch - warmup_epochs) / decay_epochs, 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
