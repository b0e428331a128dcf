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
        """Take the weights of a generator of the same depth, as wide or narrower. Unless the classical fill changes,
        this one begins exactly where that one stands: the channels it shares with that one read nothing else (not
        the inputs for a fill that one lacked, nor the extra channels of a wider net) until training makes them.
        So a refiner can start from a blank-hole generator, and a wider net from a trained narrower one instead of
        from scratch."""
        same_depth = dataclasses.replace(other.config, prefill=self.config.prefill, width=self.config.width)
        if same_depth != self.config or other.config.width > self.config.width:
            raise ValueError(f"cannot start a generator with {self.config} from one with {other.config}")
        mine, theirs = _channel_labels(self.config), _channel_labels(other.config)
        for name, module in other.named_modules():
            if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                continue
            (new_in, new_out), (old_in, old_out) = mine[name], theirs[name]
            in_slot = {label: k for k, label in enumerate(new_in)}
            out_slot = {label: k for k, label in enumerate(new_out)}
            kept = [k for k, label in enumerate(old_in) if label in in_slot]  # not the inputs of a fill this one lacks
            inputs = torch.tensor([in_slot[old_in[k]] for k in kept], dtype=torch.long)
            outputs = torch.tensor([out_slot[label] for label in old_out], dtype=torch.long)
            target = self.get_submodule(name)
            weight, old_weight = target.weight, module.weight
            if isinstance(module, nn.ConvTranspose2d):  # laid out (in, out, kh, kw)
                weight, old_weight = weight.transpose(0, 1), old_weight.transpose(0, 1)
            # the shared output channels read what they read before and nothing new; the others keep their fresh
            # initialisation
            weight[outputs] = 0
            weight[outputs[:, None], inputs[None, :]] = old_weight[:, kept]
            target.bias[outputs] = module.bias

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, C, H, W = image.shape
        hole = mask.to(image.dtype)  # (B, 1, H, W)
        inputs = [(image * 2 - 1) * (1 - hole), hole]  # holes at mid-grey
        if self.config.prefill != "none":
            inputs.append((image * 2 - 1) * hole)  # the classical fill, inside the holes only
        x = torch.cat(inputs, dim=1)  # (B, C+1 [+C], H, W)
        step = 2 ** self.config.n_down
        # Any frame size: pad to a multiple of the downsampling factor, and to at least two of it, since the
        # reflect padding of the innermost convolutions needs 2 pixels there (a frame of a few pixels is a scan too).
        pad_h, pad_w = max(-H % step, 2 * step - H), max(-W % step, 2 * step - W)
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
        # The last convolution in full precision, also under autocast: bf16 keeps 8 bits of mantissa, and a 16-bit
        # master's fill would come out in steps of 256 levels.
        with torch.autocast(x.device.type, enabled=False):
            x = self.head(x.float())[:, :, :H, :W]  # (B, C, H, W)
            return (torch.tanh(x) + 1) / 2


def _channel_labels(config: GeneratorConfig) -> dict[str, tuple[list, list]]:
    """Per convolution of a Generator built from `config`: a label for each of its input and output channels, the
    same label for the channel that plays the same part in a wider net (the split into local and global channels,
    and the real and imaginary halves of a Fourier unit, move with the width)."""
    C = config.channels
    widths = [config.width * 2 ** i for i in range(config.n_down + 1)]
    level = [[("level", i, j) for j in range(w)] for i, w in enumerate(widths)]
    cg = int(widths[-1] * config.global_ratio)
    loc, glo = [("local", j) for j in range(widths[-1] - cg)], [("global", j) for j in range(cg)]
    level[-1] = loc + glo  # the bottleneck, as the FFC blocks split it
    hidden = [("hidden", j) for j in range(cg // 2)]
    spectral = [("real", j) for j in range(cg // 2)] + [("imaginary", j) for j in range(cg // 2)]
    inputs = [("image", c) for c in range(C)] + [("hole",)]
    if config.prefill != "none":
        inputs += [("fill", c) for c in range(C)]
    labels = {"stem": (inputs, level[0]), "head": (level[0], [("image", c) for c in range(C)])}
    for i in range(config.n_down):
        labels[f"down.{i}"] = (level[i], level[i + 1])
    for j, i in enumerate(reversed(range(config.n_down))):
        labels[f"up.{j}"] = (level[i + 1], level[i])
        labels[f"fuse.{j}"] = ([("up", *label) for label in level[i]] + [("skip", *label) for label in level[i]],
                               level[i])
    for b in range(config.n_blocks):
        for ffc in (f"blocks.{b}.ffc1", f"blocks.{b}.ffc2"):
            labels.update({f"{ffc}.l2l": (loc, loc), f"{ffc}.l2g": (loc, glo), f"{ffc}.g2l": (glo, loc),
                           f"{ffc}.g2g.reduce": (glo, hidden), f"{ffc}.g2g.fourier.conv": (spectral, spectral),
                           f"{ffc}.g2g.expand": (hidden, glo)})
    return labels


def composite(pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The prediction inside the hole, the input bit for bit everywhere else; mask broadcasts over channels."""
    return torch.where(mask.bool(), pred.to(image.dtype), image)
