"""Losses: hole-normalised L1, discriminator feature matching, and four adversarial variants chosen by name.

`generator_loss` and `discriminator_loss` each return `(loss, metrics)`, metrics being plain floats to log.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from restore.models.discriminator import PatchDiscriminator

ADVERSARIAL_KINDS = ("non_saturating", "hinge", "wgan_gp", "lsgan", "none")  # "none": the L1-only ablation


@dataclass
class LossConfig:
    adversarial: str = "non_saturating"  # one of ADVERSARIAL_KINDS; non_saturating goes with the R1 penalty
    l1_weight: float = 1.0
    adv_weight: float = 0.01  # small next to L1 so sharper texture does not cost hole PSNR
    fm_weight: float = 0.1
    r1_weight: float = 1.0  # gamma of the R1 penalty on real images (non_saturating)
    r1_every: int = 16  # lazy R1: applied every k steps, scaled by k (as in StyleGAN2)
    gp_weight: float = 10.0  # WGAN-GP gradient penalty

    def __post_init__(self):
        check_adversarial(self.adversarial)


def check_adversarial(kind: str) -> None:
    if kind not in ADVERSARIAL_KINDS:
        raise ValueError(f"unknown adversarial loss {kind!r}; valid: {', '.join(ADVERSARIAL_KINDS)}")


def hole_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over hole pixels only: an image-wide mean would drown small holes."""
    hole = mask.to(pred.dtype).expand_as(pred)  # (B, C, H, W)
    return ((pred - target).abs() * hole).sum() / hole.sum().clamp(min=1.0)


def feature_matching(fake_features: list[torch.Tensor], real_features: list[torch.Tensor]) -> torch.Tensor:
    """L1 between discriminator activations for the fake and the (fixed) real image, averaged over layers."""
    return sum(F.l1_loss(f, r.detach()) for f, r in zip(fake_features, real_features)) / len(fake_features)


def _generator_adversarial(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    if kind in ("hinge", "wgan_gp"):
        return -fake_logits.mean()
    if kind == "lsgan":
        return ((fake_logits - 1) ** 2).mean()
    raise ValueError(f"adversarial loss {kind!r} has no generator term")


def generator_loss(config: LossConfig, discriminator: PatchDiscriminator | None, pred: torch.Tensor,
                   fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """L1 over the hole of the raw prediction, plus adversarial and feature-matching terms on the composite."""
    l1 = hole_l1(pred, real, mask)
    loss = config.l1_weight * l1
    metrics = {"g_l1": l1.item()}
    if config.adversarial != "none":
        fake_logits, fake_features = discriminator(fake, mask)
        with torch.no_grad():
            _, real_features = discriminator(real, mask)
        adv = _generator_adversarial(config.adversarial, fake_logits)
        fm = feature_matching(fake_features, real_features)
        loss = loss + config.adv_weight * adv + config.fm_weight * fm
        metrics.update(g_adv=adv.item(), g_fm=fm.item())
    metrics["g_loss"] = loss.item()
    return loss, metrics


def _r1_penalty(discriminator: PatchDiscriminator, real: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    real = real.detach().requires_grad_(True)
    logits, _ = discriminator(real, mask)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def _gradient_penalty(discriminator: PatchDiscriminator, real: torch.Tensor, fake: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    t = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (t * real + (1 - t) * fake).detach().requires_grad_(True)
    logits, _ = discriminator(mixed, mask)
    (grad,) = torch.autograd.grad(logits.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def discriminator_loss(config: LossConfig, discriminator: PatchDiscriminator, fake: torch.Tensor,
                       real: torch.Tensor, mask: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
    """Real vs composited fake (detached), plus the regulariser that goes with the chosen variant."""
    kind = config.adversarial
    if kind == "none":
        raise ValueError("adversarial loss 'none' trains no discriminator")
    fake = fake.detach()
    real_logits, _ = discriminator(real, mask)
    fake_logits, _ = discriminator(fake, mask)
    if kind == "non_saturating":
        loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    elif kind == "hinge":
        loss = F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    elif kind == "wgan_gp":
        loss = fake_logits.mean() - real_logits.mean()
    else:  # lsgan
        loss = ((real_logits - 1) ** 2).mean() + (fake_logits ** 2).mean()
    metrics = {"d_real": real_logits.mean().item(), "d_fake": fake_logits.mean().item()}
    if kind == "non_saturating" and config.r1_weight > 0 and step % config.r1_every == 0:
        r1 = _r1_penalty(discriminator, real, mask)
        loss = loss + config.r1_weight / 2 * r1 * config.r1_every
        metrics["d_r1"] = r1.item()
    if kind == "wgan_gp":
        gp = _gradient_penalty(discriminator, real, fake, mask)
        loss = loss + config.gp_weight * gp
        metrics["d_gp"] = gp.item()
    metrics["d_loss"] = loss.item()
    return loss, metrics
