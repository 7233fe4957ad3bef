"""Sampling: a pure function of (seed, step), so a resumed run sees the very same samples; and the
training set as the loop reads it (unreadable samples become one clean message)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from lightseg.errors import DataError, LightsegError
from lightseg.training.distributed import DistInfo


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
