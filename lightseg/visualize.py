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


def overlay(
    image: Image.Image | np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> Image.Image:
    """Blend the colour label map over ``image`` (H x W RGB): ``(1 - alpha) * image + alpha * colour``.

    Ignored pixels (255) keep the image. The result has the image's size.
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    labels = np.asarray(labels)
    if rgb.shape[:2] != labels.shape:
        raise InputError(
            f"image is {rgb.shape[1]}x{rgb.shape[0]} but labels are {labels.shape[1]}x{labels.shape[0]}"
        )
    colour = label_to_rgb(labels, palette).astype(np.float32)
    out = (1.0 - alpha) * rgb + alpha * colour
    keep = labels == IGNORE_INDEX
    out[keep] = rgb[keep]
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def draw_legend(
    image: Image.Image,
    labels: np.ndarray,
    palette: Sequence[Sequence[int]],
    class_names: Sequence[str],
    max_rows: int | None = None,
) -> Image.Image:
    """``image`` with a legend of the classes present in ``labels`` (most pixels first) drawn in
    its top-left corner: a colour swatch and the class name per row, on a dark box. Rows that do
    not fit the image's height are summarised as "+N more". Returns a new image of the same size.
    """
    from PIL import ImageDraw, ImageFont

    labels = np.asarray(labels)
    ids, counts = np.unique(labels[labels != IGNORE_INDEX], return_counts=True)
    present = [int(i) for i in ids[np.argsort(-counts, kind="stable")]]
    if not present:
        return image.copy()
    out = image.convert("RGB").copy()
    font_px = max(8, min(16, out.height // 24))
    font = ImageFont.load_default(size=font_px)
    row = font_px + 4
    fit = min(max(1, (out.height - 8) // row), max_rows or len(present))
    shown = present if len(present) <= fit else present[: fit - 1]
    more = len(present) - len(shown)
    texts = [class_names[i] if i < len(class_names) else str(i) for i in shown]
    if more:
        texts.append(f"+{more} more")
    draw = ImageDraw.Draw(out, "RGBA")
    width = max(draw.textlength(t, font=font) for t in texts) + row + 10
    draw.rectangle([2, 2, 2 + width, 4 + row * len(texts)], fill=(0, 0, 0, 170))
    for k, text in enumerate(texts):
        y = 5 + k * row
        if k < len(shown):
            colour = tuple(int(v) for v in palette[shown[k]])
            draw.rectangle([6, y, 6 + font_px, y + font_px], fill=colour, outline=(255, 255, 255))
        draw.text((10 + font_px, y - 1), text, fill=(255, 255, 255), font=font)
    return out
