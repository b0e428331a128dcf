"""Patch discriminator with spectral normalisation: one real/fake logit per overlapping patch.

It sees the composited image alone, not the mask: told where the holes are, it settles for a prior there
(every hole patch is a coin toss) instead of learning what a fill looks like; blind, it must find the holes by
their content, which is what pushes the generator towards natural texture (LaMa's discriminator is blind too).
Intermediate activations are returned for the feature-matching loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm


@dataclass
class DiscriminatorConfig:
    channels: int = 3  # image channels
    width: int = 32  # channels of the first layer, doubled per downsampling layer
    n_layers: int = 3  # stride-2 layers; each logit sees a patch of about 2**(n_layers + 2) pixels


class PatchDiscriminator(nn.Module):
    """image in [0, 1] (B, C, H, W) -> logits (B, 1, h, w) and a list of features."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        layers = []
        channels = config.channels
        for i in range(config.n_layers):
            out = config.width * 2 ** i
            layers.append(spectral_norm(nn.Conv2d(channels, out, 4, stride=2, padding=1)))
            channels = out
        layers.append(spectral_norm(nn.Conv2d(channels, channels, 3, padding=1)))  # one more layer at low res
        self.layers = nn.ModuleList(layers)
        self.head = spectral_norm(nn.Conv2d(channels, 1, 3, padding=1))

    def normalised_weights(self) -> list[torch.Tensor]:
        """Every layer's spectrally normalised weight, in fp32 even under autocast: on a GPU, autocast would run
        the power iteration's matrix-vector products in bf16, too coarse for a weight's scale."""
        with torch.autocast(self.head.bias.device.type, enabled=False):
            return [layer.weight for layer in (*self.layers, self.head)]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        *weights, head_weight = self.normalised_weights()
        x = image * 2 - 1  # (B, C, H, W)
        features = []
        for layer, weight in zip(self.layers, weights):
            x = F.leaky_relu(F.conv2d(x, weight, layer.bias, layer.stride, layer.padding), 0.2)
            features.append(x)  # (B, width * 2**i, H / 2**(i+1), W / 2**(i+1))
        logits = F.conv2d(x, head_weight, self.head.bias, self.head.stride, self.head.padding)
        return logits, features  # logits (B, 1, H / 2**n_layers, W / 2**n_layers)
