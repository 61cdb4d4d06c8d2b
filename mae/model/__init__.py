"""The MAE model: encoder/decoder, mask samplers and reconstruction targets."""

from mae.model.mae import MAEOutput, MaskedAutoencoder, build_mae
from mae.model.masking import build_sampler
from mae.model.targets import Target, build_target
from mae.model.tokenizer import Tokenizer, build_tokenizer

__all__ = [
    "MAEOutput",
    "MaskedAutoencoder",
    "Target",
    "Tokenizer",
    "build_mae",
    "build_sampler",
    "build_target",
    "build_tokenizer",
]
