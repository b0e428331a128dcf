"""Losses: hole-normalised L1 (and optionally squared error), discriminator feature matching, and four adversarial
variants chosen by name.

The adversarial terms are hole-aware: a composite is real outside its holes, so only its discriminator patches
that hold a hole count as fake, and the generator's term is averaged over those patches.

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
    l2_weight: float = 0.0  # hole-normalised squared error: PSNR is a squared-error measure, and where a wide hole
    # is uncertain L1 aims at the median fill, squared error at the mean one, which scores higher
    adv_weight: float = 0.25  # with fm_weight, measured to cost at most 0.2 dB hole PSNR for natural texture
    fm_weight: float = 2.5
    r1_weight: float = 0.01  # gamma of the per-patch R1 penalty on real images (non_saturating)
    r1_every: int = 16  # lazy R1: applied every k steps, scaled by k (as in StyleGAN2)
    gp_weight: float = 10.0  # WGAN-GP gradient penalty

    def __post_init__(self):
        check_adversarial(self.adversarial)


def check_adversarial(kind: str) -> None:
    if kind not in ADVERSARIAL_KINDS:
        raise ValueError(f"unknown adversarial loss {kind!r}; valid: {', '.join(ADVERSARIAL_KINDS)}")


def _over_hole(errors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-pixel errors over hole pixels only: an image-wide mean would drown small holes."""
    hole = mask.to(errors.dtype).expand_as(errors)  # (B, C, H, W)
    return (errors * hole).sum() / hole.sum().clamp(min=1.0)


def hole_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _over_hole((pred - target).abs(), mask)


def hole_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _over_hole((pred - target) ** 2, mask)


def feature_matching(fake_features: list[torch.Tensor], real_features: list[torch.Tensor]) -> torch.Tensor:
    """L1 between discriminator activations for the fake and the (fixed) real image, averaged over layers."""
    return sum(F.l1_loss(f, r.detach()) for f, r in zip(fake_features, real_features)) / len(fake_features)


def _judge(discriminator: PatchDiscriminator, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The discriminator's logits and features in fp32, whatever precision it ran in, so losses are taken in fp32."""
    logits, features = discriminator(image)
    return logits.float(), [f.float() for f in features]


def hole_patches(mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """1.0 for every discriminator patch that holds a hole pixel, else 0.0, at the logits' resolution.

    Outside the holes the composite is the real image, so those patches of a fake are real: asking the
    discriminator to call them fake would teach it nothing and wash out its verdict on the holes (as in LaMa's
    mask-as-fake-target).
    """
    return F.adaptive_max_pool2d(mask.to(logits.dtype), logits.shape[-2:])  # (B, 1, h, w)


def _hole_mean(values: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    return (values * holes).sum() / holes.sum().clamp(min=1.0)


def _real_term(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Per-patch discriminator loss for a patch that is real; the generator minimises it for its holes."""
    if kind == "non_saturating":
        return F.softplus(-logits)
    if kind == "hinge":
        return F.relu(1 - logits)
    if kind == "wgan_gp":
        return -logits
    if kind == "lsgan":
        return (logits - 1) ** 2
    raise ValueError(f"adversarial loss {kind!r} has no real/fake terms")


def _fake_term(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Per-patch discriminator loss for a patch that is fake."""
    if kind == "non_saturating":
        return F.softplus(logits)
    if kind == "hinge":
        return F.relu(1 + logits)
    if kind == "wgan_gp":
        return logits
    if kind == "lsgan":
        return logits ** 2
    raise ValueError(f"adversarial loss {kind!r} has no real/fake terms")


def _generator_adversarial(kind: str, fake_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The generator's term averaged over the patches that hold a hole, so its weight does not shrink with the
    hole's area (like the hole-normalised L1 beside it). Hinge generators use -logits, as WGAN's do."""
    per_patch = -fake_logits if kind == "hinge" else _real_term(kind, fake_logits)
    return _hole_mean(per_patch, hole_patches(mask, fake_logits))


def generator_loss(config: LossConfig, discriminator: PatchDiscriminator | None, pred: torch.Tensor,
                   fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """L1 (and squared error) over the hole of the raw prediction, plus adversarial and feature-matching terms on
    the composite."""
    l1 = hole_l1(pred, real, mask)
    loss = config.l1_weight * l1
    metrics = {"g_l1": l1.item()}
    if config.l2_weight:
        mse = hole_mse(pred, real, mask)
        loss = loss + config.l2_weight * mse
        metrics["g_mse"] = mse.item()
    if config.adversarial != "none":
        fake_logits, fake_features = _judge(discriminator, fake)
        with torch.no_grad():
            _, real_features = _judge(discriminator, real)
        adv = _generator_adversarial(config.adversarial, fake_logits, mask)
        fm = feature_matching(fake_features, real_features)
        loss = loss + config.adv_weight * adv + config.fm_weight * fm
        metrics.update(g_adv=adv.item(), g_fm=fm.item())
    metrics["g_loss"] = loss.item()
    return loss, metrics


def _r1_penalty(discriminator: PatchDiscriminator, real: torch.Tensor) -> torch.Tensor:
    """Squared input gradient of the real logits, per patch: the gradient of their sum over an image adds up
    every patch's, so it is divided by the patch count to keep gamma's meaning at any crop size. Always in fp32:
    bfloat16's 8-bit mantissa is too coarse for a penalty built from second derivatives."""
    real = real.detach().requires_grad_(True)
    with torch.autocast(real.device.type, enabled=False):
        logits, _ = discriminator(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean() / logits[0].numel()


def _gradient_penalty(discriminator: PatchDiscriminator, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP's penalty, in fp32 like R1's."""
    t = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (t * real + (1 - t) * fake).detach().requires_grad_(True)
    with torch.autocast(real.device.type, enabled=False):
        logits, _ = discriminator(mixed)
    (grad,) = torch.autograd.grad(logits.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def discriminator_loss(config: LossConfig, discriminator: PatchDiscriminator, fake: torch.Tensor,
                       real: torch.Tensor, mask: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
    """Real vs composited fake (detached), where only the fake's patches with holes are fake, plus the
    regulariser that goes with the chosen variant."""
    kind = config.adversarial
    if kind == "none":
        raise ValueError("adversarial loss 'none' trains no discriminator")
    fake = fake.detach()
    real_logits, _ = _judge(discriminator, real)
    fake_logits, _ = _judge(discriminator, fake)
    holes = hole_patches(mask, fake_logits)
    fake_loss = holes * _fake_term(kind, fake_logits) + (1 - holes) * _real_term(kind, fake_logits)
    loss = _real_term(kind, real_logits).mean() + fake_loss.mean()
    # mean logits over the patches with holes, where real and fake differ: their gap is what D has learnt
    metrics = {"d_real": _hole_mean(real_logits, holes).item(), "d_fake": _hole_mean(fake_logits, holes).item()}
    if kind == "non_saturating" and config.r1_weight > 0 and step % config.r1_every == 0:
        r1 = _r1_penalty(discriminator, real)
        loss = loss + config.r1_weight / 2 * r1 * config.r1_every
        metrics["d_r1"] = r1.item()
    if kind == "wgan_gp":
        gp = _gradient_penalty(discriminator, real, fake)
        loss = loss + config.gp_weight * gp
        metrics["d_gp"] = gp.item()
    metrics["d_loss"] = loss.item()
    return loss, metrics
