"""Inpainting generator: a small U-Net whose bottleneck is a stack of LaMa-style Fast Fourier Convolution blocks.

The spectral branch of each FFC sees the whole frame at once (a global receptive field at any resolution), so
a model trained on crops carries over to full scans; the skip connections keep the fine detail thin scratches
need. Built bottom-up: FourierUnit -> SpectralTransform -> FFC -> FFCResBlock -> GeneratorConfig -> Generator.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class FourierUnit(nn.Module):
    """A 1x1 convolution in the frequency domain: every output pixel depends on every input pixel."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        dtype = x.dtype
        f = torch.fft.rfft2(x.float(), norm="ortho")  # (B, C, H, W//2+1) complex; FFT needs fp32 under autocast
        f = torch.cat([f.real, f.imag], dim=1)  # (B, 2C, H, W//2+1)
        f = F.relu(self.conv(f.to(dtype))).float()
        f = torch.complex(f[:, :C], f[:, C:])  # (B, C, H, W//2+1)
        return torch.fft.irfft2(f, s=(H, W), norm="ortho").to(dtype)  # (B, C, H, W)


class SpectralTransform(nn.Module):
    """LaMa's global branch: squeeze channels, Fourier unit with a residual, expand back."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        hidden = out_channels // 2
        self.reduce = nn.Conv2d(in_channels, hidden, 1)
        self.fourier = FourierUnit(hidden)
        self.expand = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.reduce(x))  # (B, hidden, H, W)
        return self.expand(x + self.fourier(x))  # (B, out, H, W)


class FFC(nn.Module):
    """Fast Fourier Convolution: channels split into a local part (3x3 convs) and a global part (spectral).

    Input and output are (local, global) pairs; the four paths local->local, local->global, global->local and
    global->global are summed per output part.
    """

    def __init__(self, channels: int, global_ratio: float):
        super().__init__()
        self.global_channels = int(channels * global_ratio)
        self.local_channels = channels - self.global_channels
        cl, cg = self.local_channels, self.global_channels
        self.l2l = nn.Conv2d(cl, cl, 3, padding=1, padding_mode="reflect")
        self.l2g = nn.Conv2d(cl, cg, 3, padding=1, padding_mode="reflect")
        self.g2l = nn.Conv2d(cg, cl, 3, padding=1, padding_mode="reflect")
        self.g2g = SpectralTransform(cg, cg)

    def forward(self, xl: torch.Tensor, xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        yl = self.l2l(xl) + self.g2l(xg)  # (B, cl, H, W)
        yg = self.l2g(xl) + self.g2g(xg)  # (B, cg, H, W)
        return yl, yg


class FFCResBlock(nn.Module):
    """Two FFCs with a residual connection; no normalisation (BatchNorm hurt small-batch CPU training)."""

    def __init__(self, channels: int, global_ratio: float):
        super().__init__()
        self.ffc1 = FFC(channels, global_ratio)
        self.ffc2 = FFC(channels, global_ratio)

    def forward(self, xl: torch.Tensor, xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        yl, yg = self.ffc1(xl, xg)
        yl, yg = self.ffc2(F.relu(yl), F.relu(yg))
        return xl + yl, xg + yg


PREFILLS = ("none", "telea", "harmonic")  # what the holes hold when the network sees them


@dataclass
class GeneratorConfig:
    channels: int = 3  # image channels; the mask adds one input channel
    width: int = 32  # channels at full resolution, doubled at each downsampling
    n_down: int = 2  # the FFC blocks run at 1 / 2**n_down of the input resolution
    n_blocks: int = 6  # FFC residual blocks in the bottleneck
    global_ratio: float = 0.75  # share of bottleneck channels in the spectral (global) branch
    prefill: str = "none"  # "none": holes are blanked; "telea" or "harmonic": the caller filled them with that
    # `classical_fill`, an extra input

    def __post_init__(self):
        if self.prefill not in PREFILLS:
            raise ValueError(f"prefill must be one of {', '.join(PREFILLS)}; got {self.prefill!r}")


class Generator(nn.Module):
    """image in [0, 1] (B, C, H, W) + bool mask (B, 1, H, W), True = hole -> prediction in [0, 1] (B, C, H, W).

    Hole pixels are blanked before the network sees them, so the prediction never depends on damaged content.
    With `prefill` the caller has replaced them by a classical fill, which the network also sees, as extra input
    channels that hold the fill inside the holes and zero elsewhere.
    The raw prediction covers the whole frame; `composite` keeps only its hole pixels.
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        widths = [config.width * 2 ** i for i in range(config.n_down + 1)]
        inputs = config.channels + 1 + (config.channels if config.prefill != "none" else 0)
        self.stem = nn.Conv2d(inputs, widths[0], 5, padding=2, padding_mode="reflect")
        self.down = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1, padding_mode="reflect")
            for i in range(config.n_down)
        )
        self.blocks = nn.ModuleList(FFCResBlock(widths[-1], config.global_ratio) for _ in range(config.n_blocks))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 4, stride=2, padding=1) for i in reversed(range(config.n_down))
        )
        self.fuse = nn.ModuleList(
            nn.Conv2d(2 * widths[i], widths[i], 3, padding=1, padding_mode="reflect")
            for i in reversed(range(config.n_down))
        )
        self.head = nn.Conv2d(widths[0], config.channels, 3, padding=1, padding_mode="reflect")

    @torch.no_grad()
    def start_from(self, other: Generator) -> None:
        """Take the weights of a generator of the same shape. From a blank-hole one, this refiner's inputs for the
        classical fill start at zero: it begins exactly where that generator stands and learns to use the fill."""
        if dataclasses.replace(other.config, prefill=self.config.prefill) != self.config:
            raise ValueError(f"cannot start a generator with {self.config} from one with {other.config}")
        state = other.state_dict()
        if other.config.prefill != self.config.prefill:
            stem = self.stem.weight.new_zeros(self.stem.weight.shape)
            shared = min(stem.shape[1], state["stem.weight"].shape[1])
            stem[:, :shared] = state["stem.weight"][:, :shared]
            state["stem.weight"] = stem
        self.load_state_dict(state)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, C, H, W = image.shape
        hole = mask.to(image.dtype)  # (B, 1, H, W)
        inputs = [(image * 2 - 1) * (1 - hole), hole]  # holes at mid-grey
        if self.config.prefill != "none":
            inputs.append((image * 2 - 1) * hole)  # the classical fill, inside the holes only
        x = torch.cat(inputs, dim=1)  # (B, C+1 [+C], H, W)
        step = 2 ** self.config.n_down
        pad_h, pad_w = -H % step, -W % step  # any frame size: pad to a multiple of the downsampling factor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        x = F.relu(self.stem(x))  # (B, w, H, W)
        skips = []
        for down in self.down:
            skips.append(x)
            x = F.relu(down(x))  # (B, 2w, H/2, W/2) ...
        split = self.blocks[0].ffc1.local_channels if self.blocks else x.shape[1]
        xl, xg = x[:, :split], x[:, split:]
        for block in self.blocks:
            xl, xg = block(xl, xg)
        x = torch.cat([xl, xg], dim=1)  # (B, w * 2**n_down, H/step, W/step)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips)):
            x = F.relu(up(x))  # doubles the resolution, halves the channels
            x = F.relu(fuse(torch.cat([x, skip], dim=1)))
        x = self.head(x)[:, :, :H, :W]  # (B, C, H, W)
        return (torch.tanh(x) + 1) / 2


def composite(pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The prediction inside the hole, the input bit for bit everywhere else; mask broadcasts over channels."""
    return torch.where(mask.bool(), pred.to(image.dtype), image)
