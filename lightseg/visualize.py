"""Pictures of label maps: palette PNGs and colour overlays on the input image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from lightseg.errors import InputError
from lightseg.meta import IGNORE_INDEX


def _palette_array(palette: Sequence[Sequence[int]]) -> np.ndarray:
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(pal) > 255:
        raise InputError(f"a palette PNG holds at most 255 classes (255 is 'ignore'); got {len(pal)}")
    return pal


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """H x W integer labels -> a mode "P" PIL image whose palette is ``palette``.

    The pixel values stay the class indices (the file reads back as the label map); index 255
    ("ignore") is black. Fails naming the first label that has no palette colour.
    """
    pal = _palette_array(palette)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"expected an H x W label map, got shape {labels.shape}")
    valid = labels[labels != IGNORE_INDEX]
    if valid.size and (valid.min() < 0 or valid.max() >= len(pal)):
        raise InputError(f"label {int(valid.max())} has no colour in a palette of {len(pal)} classes")
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(pal)] = pal
    img.putpalette(flat.reshape(-1).tolist())
    return img


def label_to_rgb(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """H x W labels -> H x W x 3 uint8 colours (ignore -> black)."""
    flat = np.zeros((256, 3), dtype=np.uint8)
    pal = _palette_array(palette)
    flat[: len(pal)] = pal
    return flat[np.asarray(labels).astype(np.uint8)]


# Rows blended at a time: the float32 arithmetic of a 12 MP image in one piece would take ~600 MB.
BAND_ROWS = 256


def overlay(
    image: Image.Image | np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> Image.Image:
    """Blend the colour label map over ``image`` (H x W RGB): ``(1 - alpha) * image + alpha * colour``.

    Ignored pixels (255) keep the image. The result has the image's size; it is computed a band of
    rows at a time, so its memory does not grow with the image beyond the result itself.
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    labels = np.asarray(labels)
    if rgb.shape[:2] != labels.shape:
        raise InputError(
            f"image is {rgb.shape[1]}x{rgb.shape[0]} but labels are {labels.shape[1]}x{labels.shape[0]}"
        )
    out = np.empty((*rgb.shape[:2], 3), dtype=np.uint8)
    for r in range(0, len(labels), BAND_ROWS):
        lab, img = labels[r : r + BAND_ROWS], rgb[r : r + BAND_ROWS].astype(np.float32)
        blend = (1.0 - alpha) * img + alpha * label_to_rgb(lab, palette).astype(np.float32)
        keep = lab == IGNORE_INDEX
        blend[keep] = img[keep]
        out[r : r + BAND_ROWS] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="RGB")


def class_counts(labels: np.ndarray, minlength: int = 0) -> np.ndarray:
    """Pixels per label value (``np.bincount``), counted a band of rows at a time so that a 12 MP
    uint8 label map is never widened to int64 at once."""
    labels = np.asarray(labels)
    counts = np.zeros(max(minlength, 1), dtype=np.int64)
    for r in range(0, len(labels), BAND_ROWS * 4):
        band = np.bincount(labels[r : r + BAND_ROWS * 4].ravel(), minlength=len(counts))
        if len(band) > len(counts):
            counts = np.pad(counts, (0, len(band) - len(counts)))
        counts += band
    return counts


def legend_font_px(width: int, height: int) -> int:
    """Legend text height: about 1/36 of the short side, 8 to 96 pixels (readable on a 12 MP photo,
    small on a 240 x 180 frame)."""
    return int(min(96, max(8, round(min(width, height) / 36))))


def draw_legend(
    image: Image.Image,
    labels: np.ndarray,
    palette: Sequence[Sequence[int]],
    class_names: Sequence[str],
    max_rows: int | None = None,
) -> Image.Image:
    """``image`` with a legend of the classes present in ``labels`` (most pixels first) drawn in
    its top-left corner: a colour swatch and the class name per row, on a dark box. The text scales
    with the image (:func:`legend_font_px`) and the box covers at most 40% of its height; rows that
    do not fit are summarised as "+N more". Returns a new image of the same size.
    """
    from PIL import ImageDraw, ImageFont

    counts = class_counts(labels, 256)
    counts[IGNORE_INDEX] = 0
    present = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    if not present:
        return image.copy()
    out = image.convert("RGB").copy()
    font_px = legend_font_px(out.width, out.height)
    font = ImageFont.load_default(size=font_px)
    row = font_px + max(4, font_px // 4)
    fit = min(max(1, int(out.height * 0.4) // row), max_rows or len(present))
    shown = present if len(present) <= fit else present[: fit - 1]
    more = len(present) - len(shown)
    texts = [class_names[i] if i < len(class_names) else str(i) for i in shown]
    if more:
        texts.append(f"+{more} more")
    draw = ImageDraw.Draw(out, "RGBA")
    pad = max(2, font_px // 4)
    width = max(draw.textlength(t, font=font) for t in texts) + font_px + 3 * pad
    draw.rectangle([pad, pad, pad + width, 2 * pad + row * len(texts)], fill=(0, 0, 0, 170))
    for k, text in enumerate(texts):
        y = 2 * pad + k * row
        if k < len(shown):
            colour = tuple(int(v) for v in palette[shown[k]])
            draw.rectangle([2 * pad, y, 2 * pad + font_px, y + font_px], fill=colour, outline=(255, 255, 255))
        draw.text((3 * pad + font_px, y - 1), text, fill=(255, 255, 255), font=font)
    return out
