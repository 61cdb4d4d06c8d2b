"""Tokenizers for Table 1(d)'s dVAE target: images -> one token id per patch.

A tokenizer maps images (N, C, H, W), in the data set's normalised space, to logits over its
vocabulary on a grid equal to the MAE's patch grid, so token (i, j) belongs to patch (i, j) and
`tokens` flattens them in `patchify`'s order. Two implementations:

- `DiscreteVAE`, the in-project dVAE (DALL-E's recipe, small): a convolutional encoder whose grid is
  the patch grid, a codebook, a convolutional decoder; trained with the Gumbel-softmax relaxation
  (`mae.train.tokenizer`). It can also decode tokens back to pixels, for pictures.
- `DalleTokenizer`, the DALL-E dVAE encoder (`dall_e.Encoder`, 8192 codes, 8x down-sampling):
  images are brought back to [0, 1], grey repeated to RGB, resized to 8x the patch grid and mapped
  as DALL-E expects. Its weights come from a local file (`tokenizer.weights`), never a download.

Both are frozen inside the MAE's target, so their weights travel in its checkpoints.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mae.config import DALLE_VOCAB, ExperimentConfig
from mae.schema import ConfigError

DALLE_DOWNSAMPLING = 8  # dall_e.Encoder pools 2x three times


class Tokenizer(nn.Module):
    """Images -> logits (N, vocab, grid, grid) and token ids (N, grid * grid)."""

    vocab: int
    can_decode: bool = False

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(N, L) int64 ids, row-major over the grid: `patchify`'s order."""
        return self.logits(images).argmax(dim=1).flatten(1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, grid, grid) ids -> images in the normalised space the tokenizer reads."""
        raise NotImplementedError(f"{type(self).__name__} cannot decode tokens")


class DVAEOutput(NamedTuple):
    recon: torch.Tensor  # (N, C, H, W) from the relaxed (soft) codes
    logits: torch.Tensor  # (N, vocab, grid, grid)


class DiscreteVAE(Tokenizer):
    """The in-project dVAE. The encoder sees each patch and a one-pixel halo around it (a 3x3
    convolution, then one with kernel = stride = the patch size, then 1x1 convolutions), so a
    token describes its patch; the decoder mixes neighbouring codes (3x3 on the grid) and draws
    the pixels back (a transposed convolution with kernel = stride = the patch size, then 3x3)."""

    can_decode = True

    def __init__(self, channels: int, patch_size: int, vocab: int, hidden: int):
        super().__init__()
        self.vocab = vocab
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, patch_size, stride=patch_size),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, vocab, 1),
        )
        self.codebook = nn.Parameter(torch.randn(vocab, hidden))
        self.decoder = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(hidden, hidden, patch_size, stride=patch_size),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 3, padding=1),
        )

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, vocab, g, g) one-hot or relaxed codes -> (N, hidden, g, g) codebook mixtures."""
        return torch.einsum("nvhw,vd->ndhw", codes, self.codebook)

    def forward(self, images: torch.Tensor, temperature: float) -> DVAEOutput:
        """Training pass: Gumbel-softmax samples of the codes, decoded back to pixels."""
        logits = self.logits(images)
        codes = F.gumbel_softmax(logits, tau=temperature, hard=False, dim=1)
        return DVAEOutput(self.decoder(self.embed(codes)), logits)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        codes = F.one_hot(ids, self.vocab).permute(0, 3, 1, 2).to(self.codebook.dtype)
        return self.decoder(self.embed(codes))


class DalleTokenizer(Tokenizer):
    """DALL-E's dVAE encoder on our images; `load` gives it weights and the data's pixel scale."""

    def __init__(self, channels: int, grid: int):
        super().__init__()
        import dall_e  # the DALL-E package; only this tokenizer needs it

        self.vocab, self.grid = DALLE_VOCAB, grid
        self.encoder = dall_e.Encoder(vocab_size=DALLE_VOCAB)
        self.register_buffer("pixel_mean", torch.zeros(channels))
        self.register_buffer("pixel_std", torch.ones(channels))

    def load(self, path: str | None, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """Weights from the local file `path` (the official `encoder.pkl`, which pickles the
        module, or a state dict) and the data set's normalisation, to undo it."""
        self.encoder.load_state_dict(read_dalle_weights(path))
        self.pixel_mean.copy_(torch.tensor(mean))
        self.pixel_std.copy_(torch.tensor(std))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        from dall_e import map_pixels

        x = images.float() * self.pixel_std.view(1, -1, 1, 1) + self.pixel_mean.view(1, -1, 1, 1)
        x = x.clamp(0, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        side = DALLE_DOWNSAMPLING * self.grid
        x = F.interpolate(
            x, size=(side, side), mode="bilinear", antialias=True, align_corners=False
        )
        return self.encoder(map_pixels(x.clamp(0, 1).contiguous())).float()


def read_dalle_weights(path: str | None) -> dict[str, torch.Tensor]:
    """The DALL-E encoder's state dict from a local file; a missing file is one line naming
    `tokenizer.weights` (the weights are never downloaded)."""
    allowed = (
        "a local file with the DALL-E encoder's weights (encoder.pkl or a state dict) is needed "
        "for tokenizer.kind=dalle; nothing is downloaded"
    )
    if not path or not Path(path).is_file():
        raise ConfigError("<config>", "tokenizer.weights", path, allowed)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # the official file pickles the whole dall_e.Encoder
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    return loaded.state_dict() if isinstance(loaded, nn.Module) else loaded


def build_tokenizer(cfg: ExperimentConfig) -> Tokenizer:
    """The (untrained) tokenizer `cfg.tokenizer` describes, on `cfg`'s patch grid."""
    p, chans = cfg.encoder.patch_size, cfg.image_channels
    if cfg.tokenizer.kind == "dalle":
        return DalleTokenizer(chans, cfg.image_side // p)
    return DiscreteVAE(chans, p, cfg.target.dvae_vocab, cfg.tokenizer.hidden)
