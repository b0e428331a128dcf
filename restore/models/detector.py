"""Damage segmentation net: a small U-Net that maps an RGB frame to per-pixel damage logits.

Built bottom-up: ConvBlock -> DetectorConfig -> DetectorNet. No normalisation layers, so a net trained on small
crops in small batches behaves the same on one whole frame at inference. Three poolings give a receptive field
of about 100 px: enough to see a blotch as a whole, not just its edge.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBlock(nn.Module):
    """Two 3x3 convolutions with LeakyReLU: the unit of every U-Net level."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv1(x), 0.1)
        return F.leaky_relu(self.conv2(x), 0.1)


@dataclass(frozen=True)
class DetectorConfig:
    in_channels: int = 3
    widths: tuple[int, ...] = (16, 24, 32, 48)  # channels per level, full resolution first

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))  # lists from a weights file
        if len(self.widths) < 2:
            raise ValueError(f"a U-Net needs at least 2 levels, got widths {self.widths}")


class DetectorNet(nn.Module):
    """U-Net: (B, C, H, W) in [0, 1] -> (B, 1, H, W) damage logits, for any H and W."""

    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.config = config
        w = config.widths
        self.down = nn.ModuleList([ConvBlock(config.in_channels, w[0])] +
                                  [ConvBlock(w[i - 1], w[i]) for i in range(1, len(w))])
        self.up = nn.ModuleList([ConvBlock(w[i + 1] + w[i], w[i]) for i in range(len(w) - 1)])
        self.head = nn.Conv2d(w[0], 1, 1)
        # He initialisation for LeakyReLU: without normalisation layers, PyTorch's default init shrinks the signal
        # at every one of the 14 convolutions and training crawls. The head starts at the prior of rare damage.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0.1, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.constant_(self.head.bias, -3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        # Pad to a multiple of 2**poolings, and to at least 2 px at the deepest level: reflect padding needs that.
        multiple = 2 ** (len(self.down) - 1)
        pad_h = max(-height % multiple, 2 * multiple - height)
        pad_w = max(-width % multiple, 2 * multiple - width)
        x = F.pad(x - 0.5, (0, pad_w, 0, pad_h), mode="replicate")  # (B, C, H', W'), centred on 0
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))  # (B, w[i], H'/2^i, W'/2^i)
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([x, skips.pop()], dim=1))  # (B, w[i], H'/2^i, W'/2^i)
        return self.head(x)[..., :height, :width]  # (B, 1, H, W)
