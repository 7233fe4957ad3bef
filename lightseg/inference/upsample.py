"""Post-processing of a segmentor's output: full-resolution labels from stride-s logits.

Full-resolution labels are defined as ``argmax_k`` of the logits bilinearly upsampled
(align_corners=False) from the model's output stride to the padded input size, then cropped to the
image — exactly what :func:`lightseg.inference.forward_whole` computes.
:func:`upsample_argmax` gets the same labels without building the K x H x W upsampled logits.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from lightseg.inference.passes import resize_logits

# torch's intra-op thread count belongs to the calling thread in torch's CPU builds (an OpenMP
# setting: a worker thread that lowers it leaves the main thread's count alone), so a scope saves
# and restores the count of the thread that enters it; nested scopes restore once, at the outside.
_scope = threading.local()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads in this thread; the count it had before is
    restored afterwards, also on errors, in nested scopes and with other threads in scopes of their
    own at the same time."""
    depth = getattr(_scope, "depth", 0)
    if depth == 0:
        _scope.saved = torch.get_num_threads()
        if _scope.saved != n:
            torch.set_num_threads(n)
    _scope.depth = depth + 1
    try:
        yield
    finally:
        _scope.depth -= 1
        if _scope.depth == 0 and torch.get_num_threads() != _scope.saved:
            torch.set_num_threads(_scope.saved)


def _bilinear_taps(out_len: int, in_len: int, keep: int, device: torch.device):
    """Source indices (i0, i1) and weight of i1 for the first ``keep`` of ``out_len`` outputs,
    as ``F.interpolate(mode="bilinear", align_corners=False, size=...)`` computes them."""
    scale = in_len / out_len
    src = ((torch.arange(keep, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_len - 1)
    i1 = (i0 + 1).clamp(max=in_len - 1)
    return i0, i1, src - i0


def _argmax0(v: torch.Tensor) -> torch.Tensor:
    """``v.argmax(0)`` for K x M (first index on ties, like ``argmax``). ``max(0)`` reduces over
    the short (K ~ 10..150) leading dimension with contiguous vectorised passes: 1.3-1.6x faster
    than a running maximum in Python and 4-5x faster than ``argmax(0)`` on CPU (K = 11..150,
    19,200 columns, one thread)."""
    return v.max(0).indices


def _cell_argmax(logits: torch.Tensor, low: torch.Tensor, s: int, chunk: int) -> torch.Tensor:
    """Exact labels for an even integer factor ``s``: N x K x h x w -> N x sh x sw.

    ``low`` = ``logits.argmax(1)``. With align_corners=False, output row ``s*i + s/2 + a``
    (a = 0..s-1) lies between source rows i and i+1 with weight ``(a + 0.5) / s``; the border rows
    clamp to the edge, which is the same as interpolating a replicate-padded map. So the output is
    a grid of (h+1) x (w+1) cells of s x s pixels sharing four corners and one weight pattern,
    shifted by s/2.
    """
    n, k, h, w = logits.shape
    ys = torch.arange(-1, h + 1, device=logits.device).clamp(0, h - 1)  # replicate padding
    xs = torch.arange(-1, w + 1, device=logits.device).clamp(0, w - 1)
    lowp = low[:, ys][:, :, xs]  # N x (h+2) x (w+2)
    a, b, c, d = lowp[:, :-1, :-1], lowp[:, :-1, 1:], lowp[:, 1:, :-1], lowp[:, 1:, 1:]
    grid = a[:, :, None, :, None].expand(n, h + 1, s, w + 1, s).clone()
    ns, ps, qs = torch.nonzero((a != b) | (a != c) | (a != d), as_tuple=True)
    if len(ns) == 0:
        return grid.reshape(n, (h + 1) * s, (w + 1) * s)[:, s // 2 : s // 2 + h * s, s // 2 : s // 2 + w * s]
    lam = (torch.arange(s, dtype=logits.dtype, device=logits.device) + 0.5) / s
    wy, wx = (1 - lam, lam), (1 - lam, lam)
    # Corner order (top-left, top-right, bottom-left, bottom-right) -> 4 x s*s bilinear weights.
    weights = torch.stack([(wy[i][:, None] * wx[j][None, :]).reshape(-1) for i in (0, 1) for j in (0, 1)])
    flat = logits.permute(1, 0, 2, 3).reshape(k, n * h * w)  # class-major: gathers stay contiguous
    for st in range(0, len(ns), chunk):
        n_, p, q = ns[st : st + chunk], ps[st : st + chunk], qs[st : st + chunk]
        y0, y1, x0, x1 = ys[p], ys[p + 1], xs[q], xs[q + 1]
        base = n_ * (h * w)
        corners = torch.stack(
            [
                flat[:, base + y0 * w + x0],
                flat[:, base + y0 * w + x1],
                flat[:, base + y1 * w + x0],
                flat[:, base + y1 * w + x1],
            ],
            2,
        )  # K x cells x 4
        grid[n_, p, :, q, :] = (
            _argmax0(corners @ weights).view(-1, s, s).to(grid.dtype)
        )  # K x cells x s*s -> labels
    half = s // 2
    return grid.reshape(n, (h + 1) * s, (w + 1) * s)[:, half : half + h * s, half : half + w * s]


def _pixel_argmax(
    logits: torch.Tensor, low: torch.Tensor, big: tuple[int, int], keep: tuple[int, int], chunk: int
) -> torch.Tensor:
    """Exact labels for any size: interpolate only pixels whose four sources disagree (``low`` =
    ``logits.argmax(1)``, in the labels' type)."""
    n, k, h, w = logits.shape
    y0, y1, ly = _bilinear_taps(big[0], h, keep[0], logits.device)
    x0, x1, lx = _bilinear_taps(big[1], w, keep[1], logits.device)
    a, b = low[:, y0][:, :, x0], low[:, y0][:, :, x1]
    c, d = low[:, y1][:, :, x0], low[:, y1][:, :, x1]
    out = a.clone()
    ns, ys, xs = torch.nonzero((a != b) | (a != c) | (a != d), as_tuple=True)
    flat = logits.permute(0, 2, 3, 1).reshape(n * h * w, k)  # (pixel, class) rows
    for s in range(0, len(ns), chunk):
        n_, yy, xx = ns[s : s + chunk], ys[s : s + chunk], xs[s : s + chunk]
        base = n_ * (h * w)
        r0, r1, c0, c1 = y0[yy] * w, y1[yy] * w, x0[xx], x1[xx]
        wy, wx = ly[yy, None], lx[xx, None]
        top = (1 - wx) * flat[base + r0 + c0] + wx * flat[base + r0 + c1]
        bottom = (1 - wx) * flat[base + r1 + c0] + wx * flat[base + r1 + c1]
        out[n_, yy, xx] = ((1 - wy) * top + wy * bottom).argmax(1).to(out.dtype)
    return out


# Above these shares of vertically adjacent low-resolution pixels with different labels, the
# boundary-only computation costs more than upsampling everything (measured on a 2-core AMD EPYC,
# 11 classes, outputs of 360x480 to 12 MP): for an even integer factor, whose boundary cells are
# small matrix products, at about 0.25; for any other factor, pixel by pixel, at about 0.06.
MAX_BOUNDARY_FRACTION = 0.25
MAX_BOUNDARY_FRACTION_PIXELS = 0.06
# Memory the direct computation may use at once; larger outputs are computed a band of rows at a time.
DIRECT_WORKSPACE = 32 * 2**20


def label_dtype(num_classes: int) -> torch.dtype:
    """The smallest integer type that holds labels ``0 .. num_classes - 1`` (uint8 up to 256)."""
    return torch.uint8 if num_classes <= 256 else torch.int16


def upsample_argmax(
    logits: torch.Tensor,
    size: Sequence[int],
    crop: Sequence[int] | None = None,
    chunk: int = 512,
    dtype: torch.dtype = torch.int64,
) -> torch.Tensor:
    """``argmax(bilinear(logits -> size), dim=1)[..., :crop_h, :crop_w]`` as N x h x w labels of
    ``dtype`` (:func:`label_dtype` gives the smallest that holds them).

    Why it is cheap: every upsampled pixel is a convex combination of the logit vectors of its
    (at most) four source pixels, so when those four agree on their argmax c, c is also the
    argmax of the combination. Only where they disagree (near label boundaries) are all K
    classes interpolated — for the usual even integer factor (stride 8) one s x s cell at a time
    as a small matrix product (:func:`_cell_argmax`), otherwise pixel by pixel. Equal to the
    direct computation up to float rounding (near-ties may flip). Its memory is a few bytes per
    output pixel, never K floats per pixel: where labels change often (an untrained model, or
    :data:`MAX_BOUNDARY_FRACTION_PIXELS` for factors other than an even integer) the direct
    computation runs instead, a band of rows at a time (:data:`DIRECT_WORKSPACE`).

    The boundary pass runs on one torch thread: its small ops gain nothing from a second thread
    (CGRSeg-T, CamVid, 512x512: 1.5 ms on one thread, 1.6-2.6 ms on two), and between ONNX Runtime
    runs two torch threads and ONNX Runtime's spinning workers slow each other down.

    Args:
        logits: N x K x h x w (any stride).
        size: (H, W) of the bilinear upsampling (the padded input size).
        crop: (h', w') <= size to keep (the image size before padding); default ``size``.
    """
    h, w = logits.shape[-2:]
    big = (int(size[0]), int(size[1]))
    keep = big if crop is None else (int(crop[0]), int(crop[1]))
    s = big[0] // h
    compact = label_dtype(logits.shape[1])
    with torch_threads(1):
        low = logits.permute(0, 2, 3, 1).contiguous().argmax(-1).to(compact)  # argmax over dim 1: 5x slower
        changes = (low[:, 1:] != low[:, :-1]).float().mean()
        cells = s >= 2 and s % 2 == 0 and big == (s * h, s * w)
        if cells and changes <= MAX_BOUNDARY_FRACTION:
            return _cell_argmax(logits, low, s, chunk)[:, : keep[0], : keep[1]].to(dtype)
        if not cells and changes <= MAX_BOUNDARY_FRACTION_PIXELS:
            return _pixel_argmax(logits, low, big, keep, chunk * 64).to(dtype)
    # Labels change too often (e.g. an untrained model): the direct way is faster.
    return _direct_argmax(logits, big, keep, compact).to(dtype)


def _direct_argmax(
    logits: torch.Tensor, big: tuple[int, int], keep: tuple[int, int], dtype: torch.dtype
) -> torch.Tensor:
    """The labels by upsampling every class: in one piece when it fits :data:`DIRECT_WORKSPACE`
    (``F.interpolate``, as evaluation computes), else a band of output rows at a time."""
    n, k, h = logits.shape[:3]
    if n * k * big[0] * big[1] * 4 <= DIRECT_WORKSPACE:
        return resize_logits(logits, big)[:, :, : keep[0], : keep[1]].max(1).indices.to(dtype)
    # A band of output rows at a time: its two source rows mixed first (K x w per row, small), then
    # widened by F.interpolate, whose vertical factor of 1 leaves the mixed rows as they are.
    rows = max(1, DIRECT_WORKSPACE // (n * k * big[1] * 4 * 2))
    out = torch.empty((n, keep[0], keep[1]), dtype=dtype, device=logits.device)
    all_y0, all_y1, all_ly = _bilinear_taps(big[0], h, keep[0], logits.device)
    for r in range(0, keep[0], rows):
        y0, y1, ly = all_y0[r : r + rows], all_y1[r : r + rows], all_ly[r : r + rows, None]
        mixed = (1 - ly) * logits[:, :, y0] + ly * logits[:, :, y1]  # N x K x rows x w
        band = F.interpolate(mixed, size=(mixed.shape[2], big[1]), mode="bilinear", align_corners=False)
        out[:, r : r + rows] = band[..., : keep[1]].max(1).indices.to(dtype)  # max: faster than argmax
    return out
