"""What the training loop needs around it: processes, sampling, RNG state, EMA, atomic checkpoints.

Kept apart from ``train.py`` so that the loop itself reads in one sitting.
"""

from __future__ import annotations

import copy
import errno
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from lightseg.errors import CheckpointError, DataError, LightsegError, WeightsNotFoundError

# ----------------------------------------------------------------------------------------------
# Processes


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1): NCCL on CUDA,
    gloo on CPU. Returns the process's place and its device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        dev = torch.device(
            "cuda",
            info.local_rank if info.enabled or device in ("auto", "cuda") else int(device.split(":")[1]),
        )
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if info.enabled and not dist.is_initialized():
        # Keys of this attempt only: after an elastic restart (torchrun --max-restarts) the store can
        # still hold the addresses of the killed attempt's processes, and gloo would dial those.
        store, rank, world = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"lightseg/attempt_{attempt}", store)
        dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world)
    return info, dev


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


# ----------------------------------------------------------------------------------------------
# Sampling: a pure function of (seed, step), so a resumed run sees the very same samples.


def sample_seed(run_seed: int, position: int) -> int:
    """The augmentation seed of the ``position``-th sample of the run's stream."""
    return int(np.random.SeedSequence([run_seed, position]).generate_state(1)[0])


class ResumableBatches:
    """Batches of ``(index, seed)`` pairs for one process, from optimizer step ``start_step`` on.

    The run draws an endless stream of samples: epoch ``e`` is a permutation of the dataset seeded
    by ``(seed, e)``; stream position ``g`` holds ``perm_e[g mod N]`` with ``e = g div N``. Micro
    batch ``m`` of step ``t`` covers positions ``(t * accum + m) * B_global + rank * B + [0, B)``,
    so processes read disjoint samples (a distributed sampler) and everything depends only on
    ``(seed, t, m, rank)``. Used as a DataLoader ``batch_sampler``; the dataset is indexed with
    ``(index, seed)`` so that augmentation randomness is reproducible too.
    """

    def __init__(
        self,
        num_samples: int,
        batch_per_process: int,
        accum_steps: int,
        seed: int,
        info: DistInfo,
        start_step: int,
    ):
        if num_samples <= 0:
            raise DataError("the training set is empty")
        self.n = num_samples
        self.b = batch_per_process
        self.accum = accum_steps
        self.seed = seed
        self.info = info
        self.start_step = start_step
        self._perm_epoch = -1
        self._perm: list[int] = []

    def _index(self, position: int) -> int:
        epoch, pos = divmod(position, self.n)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, epoch, 1]).generate_state(1)[0])
            )
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._perm_epoch = epoch
        return self._perm[pos]

    def micro_batch(self, step: int, micro: int) -> list[tuple[int, int]]:
        global_b = self.b * self.info.world_size
        first = (step * self.accum + micro) * global_b + self.info.rank * self.b
        return [(self._index(p), sample_seed(self.seed, p)) for p in range(first, first + self.b)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            for m in range(self.accum):
                yield self.micro_batch(step, m)
            step += 1


class GuardedSamples(Dataset):
    """The training set as the loop reads it. A sample whose reading raises a
    :class:`~lightseg.errors.LightsegError` (an unreadable or mislabelled file) comes back as
    ``{"error": message}`` — one clean message in the main process instead of a DataLoader worker
    traceback. With ``skip``, the next readable sample (same augmentation seed) takes its place and
    the sample carries ``skipped``: the messages of the files it replaced."""

    def __init__(self, dataset: Dataset, skip: bool):
        self.dataset = dataset
        self.skip = skip

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        skipped: list[str] = []
        for k in range(len(self)):
            try:
                sample = self.dataset[((index + k) % len(self), seed)]
            except LightsegError as e:
                if not self.skip:
                    return {"error": str(e)}
                skipped.append(str(e))
                continue
            return {**sample, "skipped": skipped}
        return {"error": "no sample of the training set is readable:\n" + "\n".join(skipped[:5])}


def collate(samples: list[dict]) -> dict:
    """Stack ``image`` (N x 3 x H x W) and ``mask`` (N x H x W); keep ``meta`` as a list and the
    messages of skipped samples (``skipped``). A sample that failed makes the batch ``{"error"}``."""
    for s in samples:
        if "error" in s:
            return {"error": s["error"]}
    return {
        "image": torch.stack([torch.as_tensor(s["image"]) for s in samples]),
        "mask": torch.stack([torch.as_tensor(s["mask"]) for s in samples]),
        "meta": [s.get("meta", {}) for s in samples],
        "skipped": [msg for s in samples for msg in s.get("skipped", [])],
    }


# ----------------------------------------------------------------------------------------------
# RNG state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG the run touches, in types ``torch.load(weights_only=True)`` accepts (so that
    :func:`lightseg.load_checkpoint` can read training checkpoints safely)."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(py_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# EMA of the weights


class ModelEMA:
    """Exponential moving average of the weights, kept in a copy of the model (``.module``, used for
    evaluation): ``ema = decay * ema + (1 - decay) * weight`` for parameters and float buffers after
    every optimizer step; integer buffers are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema = self.module.state_dict()
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                ema[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


# ----------------------------------------------------------------------------------------------
# Atomic checkpoints


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``<path>.tmp``, fsync, then rename over ``path``.

    The rename is atomic on POSIX: at every moment ``path`` is either the previous complete file or
    the new complete file, so a run killed mid-write keeps its last good checkpoint. A write that
    fails (a full disk) removes the temporary file and names the path.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise CheckpointError(
            f"cannot write checkpoint {path}: "
            + ("the disk is full" if full else f"{e.strerror or e}")
            + f"; the partial file was removed and the previous {path.name} (if any) is intact. "
            + ("Free some space" if full else "Fix the folder")
            + " and run the same command again to resume."
        ) from e
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_train_checkpoint(path: str | os.PathLike) -> dict:
    """Read a ``lightseg-train`` checkpoint (safely: tensors and plain containers only)."""
    from lightseg.checkpoint import TRAIN_FORMAT

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint to resume from not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not (isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT):
        raise CheckpointError(f"{path}: not a lightseg training checkpoint (no format={TRAIN_FORMAT!r})")
    return obj
