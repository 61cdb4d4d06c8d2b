"""The MAE model: encoder/decoder, mask samplers and reconstruction targets."""

from mae.model.mae import MAEOutput, MaskedAutoencoder, build_mae
from mae.model.masking import build_sampler
from mae.model.targets import Target, TargetUnavailable, build_target

__all__ = [
    "MAEOutput",
    "MaskedAutoencoder",
    "Target",
    "TargetUnavailable",
    "build_mae",
    "build_sampler",
    "build_target",
]
