"""Losses. Models never compute them: the training engine calls these on model outputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lightseg.inference import resize_logits


def seg_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    avg_non_ignore: bool = False,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel cross-entropy, logits upsampled to the label size.

    ``avg_non_ignore=False`` reproduces mmseg 0.27 (the CGRSeg release): the per-pixel losses are
    averaged over *all* pixels, ignored ones counting as zero. ``True`` averages over the
    non-ignored pixels only (the better-known convention).
    """
    logits = resize_logits(logits, tuple(target.shape[-2:]))
    per_pixel = F.cross_entropy(
        logits.float(), target.long(), weight=class_weight, ignore_index=ignore_index, reduction="none"
    )
    if avg_non_ignore:
        return per_pixel.sum() / (target != ignore_index).sum().clamp_min(1)
    return per_pixel.mean()


class CrossEntropyLoss(nn.Module):
    """:func:`seg_cross_entropy` as a module, with a loss weight (1.0 in both papers)."""

    def __init__(self, ignore_index: int = 255, avg_non_ignore: bool = False, loss_weight: float = 1.0):
        super().__init__()
        self.ignore_index = ignore_index
        self.avg_non_ignore = avg_non_ignore
        self.loss_weight = loss_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_weight * seg_cross_entropy(logits, target, self.ignore_index, self.avg_non_ignore)


# --------------------------------------------------------------------------------------------------
# Pixel contrastive loss (FRM network, SPEC 2.2 — reconstructed: the paper names a contrastive term
# that makes pixel embeddings discriminative; the form below is ours)
# --------------------------------------------------------------------------------------------------
def supervised_infonce(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised InfoNCE (Khosla et al. 2020, "SupCon") over M anchors.

    z: M×d, L2-normalised; labels: M. For every anchor i with at least one positive (another
    anchor of its class), ``ℓ_i = −1/|P(i)| Σ_{p∈P(i)} log(exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ))``;
    the loss is the mean of ``ℓ_i`` over those anchors (0, still attached to the graph, if none).
    """
    m = z.shape[0]
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    logits = (z @ z.t() / temperature).masked_fill(eye, float("-inf"))  # a ≠ i
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = positive.sum(dim=1)
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / n_pos.clamp_min(1)
    valid = n_pos > 0
    if not bool(valid.any()):
        return z.sum() * 0.0
    return per_anchor[valid].mean()


def sample_anchors(
    labels: torch.Tensor,
    max_samples_per_class: int,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Flat indices of the anchors among ``labels`` (a flat label vector): per class present, in
    ascending class order, all its pixels or ``max_samples_per_class`` of them drawn without
    replacement (``torch.randperm`` on the CPU ``generator``, the global RNG if ``None``); ignore
    pixels are never drawn."""
    picked = []
    for c in torch.unique(labels).tolist():
        if c == ignore_index:
            continue
        idx = (labels == c).nonzero().squeeze(1)
        if idx.numel() > max_samples_per_class:
            order = torch.randperm(idx.numel(), generator=generator)[:max_samples_per_class]
            idx = idx[order.to(idx.device)]
        picked.append(idx)
    if not picked:
        return labels.new_zeros(0, dtype=torch.long)
    return torch.cat(picked)


def pixel_contrastive_loss(
    features: torch.Tensor,
    target: torch.Tensor,
    *,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
    temperature: float = 0.1,
    max_samples_per_class: int = 128,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Supervised pixel contrastive loss of N×C×h×w ``features`` against N×H×W ``target``.

    Labels are downsampled to h×w by nearest neighbour; anchors are drawn per class with
    :func:`sample_anchors`; the anchors' features go through ``project`` (a per-pixel module on
    M×C×1×1, e.g. :class:`PixelContrastiveLoss`'s projection head; identity if ``None``), are
    L2-normalised and scored with :func:`supervised_infonce`. Pixels never drawn (ignore pixels
    included) get exactly zero gradient.
    """
    n, c, h, w = features.shape
    labels = F.interpolate(target[:, None].float(), size=(h, w), mode="nearest").long().flatten()
    idx = sample_anchors(labels, max_samples_per_class, ignore_index, generator)
    z = features.permute(0, 2, 3, 1).reshape(n * h * w, c)[idx]
    if project is not None:
        # The projection is 1x1, i.e. per pixel: project only the anchors.
        z = project(z[:, :, None, None]).flatten(1)
    return supervised_infonce(F.normalize(z, dim=1), labels[idx], temperature)


class PixelContrastiveLoss(nn.Module):
    """Supervised pixel contrastive loss with its own projection head.

    The projection head (Conv1x1 C→C → ReLU → Conv1x1 C→``embed_dim``) lives here, in the loss,
    and not in the model: it is trained with the model (put this module's parameters in the
    optimizer and its state dict in the checkpoint) but inference and exported models never carry
    it.

    ``forward(features, target)``: features N×C×h×w (the decoder features, e.g. the FRM head's
    ``forward_train()["embed_features"]``), target N×H×W class ids. Labels are downsampled to h×w
    by nearest neighbour; pixels labelled ``ignore_index`` are never anchors (their features get
    exactly zero gradient). Per class present in the batch, at most ``max_samples_per_class``
    pixels are drawn at random (without replacement) as anchors; the projected embeddings are
    L2-normalised and fed to :func:`supervised_infonce` with ``temperature``.

    Sampling uses this module's own ``torch.Generator`` (seeded by ``seed``), whose state is part
    of ``state_dict()`` (``_extra_state``), so a resumed run draws the very same anchors.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int = 128,
        temperature: float = 0.1,
        max_samples_per_class: int = 128,
        ignore_index: int = 255,
        seed: int = 0,
    ):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1), nn.ReLU(), nn.Conv2d(in_channels, embed_dim, 1)
        )
        self.temperature = temperature
        self.max_samples_per_class = max_samples_per_class
        self.ignore_index = ignore_index
        self.generator = torch.Generator().manual_seed(seed)

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {"rng_state": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["rng_state"])

    def forward(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return pixel_contrastive_loss(
            features,
            target,
            project=self.proj,
            temperature=self.temperature,
            max_samples_per_class=self.max_samples_per_class,
            ignore_index=self.ignore_index,
            generator=self.generator,
        )


class SegLoss(nn.Module):
    """What the training engine calls: ``loss_fn(outputs, target) -> (total, parts)``.

    ``outputs`` is a model's ``forward_train`` dict: ``"logits"`` (any stride; upsampled to the
    label size by the cross-entropy) and, for heads that provide it, ``"embed_features"``.
    ``total = CE + contrastive_weight · contrastive`` (λ = 0.1 in the FRM design, SPEC 2.2); the
    contrastive term is computed only when both ``contrastive`` and ``"embed_features"`` are
    present. ``parts`` holds the detached terms (``"ce"``, ``"contrastive"``).
    """

    def __init__(
        self,
        ce: CrossEntropyLoss | None = None,
        contrastive: PixelContrastiveLoss | None = None,
        contrastive_weight: float = 0.1,
    ):
        super().__init__()
        self.ce = ce if ce is not None else CrossEntropyLoss()
        self.contrastive = contrastive
        self.contrastive_weight = contrastive_weight

    def forward(
        self, outputs: dict[str, torch.Tensor], target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = self.ce(outputs["logits"], target)
        parts = {"ce": ce.detach()}
        total = ce
        if self.contrastive is not None and "embed_features" in outputs:
            con = self.contrastive(outputs["embed_features"], target)
            parts["contrastive"] = con.detach()
            total = total + self.contrastive_weight * con
        return total, parts


def build_seg_loss(
    model: nn.Module,
    *,
    contrastive_weight: float = 0.1,
    ignore_index: int = 255,
    avg_non_ignore: bool = False,
    **contrastive_kwargs,
) -> SegLoss:
    """The loss for ``model``: CE, plus the pixel contrastive term when the model's head exposes
    ``embed_channels`` (the FRM head) and ``contrastive_weight > 0``. ``contrastive_kwargs`` go to
    :class:`PixelContrastiveLoss` (``embed_dim``, ``temperature``, ``max_samples_per_class``, ``seed``)."""
    ce = CrossEntropyLoss(ignore_index=ignore_index, avg_non_ignore=avg_non_ignore)
    head = getattr(model, "head", model)
    channels = getattr(head, "embed_channels", None)
    contrastive = None
    if channels is not None and contrastive_weight > 0:
        contrastive = PixelContrastiveLoss(channels, ignore_index=ignore_index, **contrastive_kwargs)
    return SegLoss(ce, contrastive, contrastive_weight)
