"""Data loading for training: a resumable, shard-aware sampler and per-sample seeding.

Exact resume needs the same samples in the same order with the same augmentations. Three pieces:

* ``ResumableSampler``: a per-epoch permutation drawn from ``seed + epoch`` (like
  ``DistributedSampler``: padded to a multiple of the world size, rank ``r`` takes every
  ``world``-th index). Its position inside the epoch is set from the training loop's progress
  (batches consumed, not batches prefetched) and saved through the loader's ``state_dict``, which
  Lightning stores in the checkpoint and restores before the loader is iterated again.
* ``SeededDataset``: each sample is read under RNG states (torch, numpy, Python) seeded from
  ``(seed, epoch, position)``, inside a fork of the global RNG. Augmentations are then the same on
  resume, with any number of workers, and reading data never moves the training process's RNG.
* ``SeededCollate``: the batch collate (mixup/cutmix draws) is seeded the same way from its batch.
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Any, Callable, Iterator, Mapping

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from tubelet.data.alternating import AlternatingTasks
from tubelet.data.online import OnlineClips, online_order
from tubelet.errors import ConfigError

SEED_KEY = "__tubelet_seed__"
_MASK = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed from (seed, epoch, position) via numpy's SeedSequence (well mixed, stable)."""
    return int(np.random.SeedSequence([seed & _MASK, epoch, position]).generate_state(2, np.uint64)[0]) & _MASK


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block under global RNGs seeded with ``seed``; restore the previous states afterwards."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % (1 << 32))
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class ResumableSampler(Sampler):
    """Yields ``(dataset_index, sample_seed, epoch)`` for this rank's shard of a seeded per-epoch order.

    ``known_bad``: dataset index -> ``(path, reason)`` of files that failed to load (the main process's
    :class:`~tubelet.data.datasets.FailureTracker` fills it as batches report them). Their keys get the
    record as a fourth element, and :class:`SeededDataset` returns the failure without reading the
    file, so that no worker decodes a bad file again; the order, the seeds and the batches stay those
    of a run without the mark, so resuming is unaffected.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        known_bad: Mapping[int, tuple[str, str]] | None = None,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the training dataset is empty")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.num_samples = num_samples
        self.known_bad = known_bad if known_bad is not None else {}
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.consumed = 0  # samples of this rank's shard already used in ``epoch``
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.consumed = 0
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch`` (the full epoch, before any skipping)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            indices = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            indices = list(range(self.num_samples))
        total = len(self) * self.num_replicas
        indices += indices[: total - len(indices)]  # pad so that every rank gets as many
        return indices[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        start = 0
        if self._resume is not None:
            epoch, consumed = self._resume
            self._resume = None
            if epoch == self.epoch:
                start = consumed
        self.consumed = start
        for pos, index in enumerate(self.order(self.epoch)[start:], start=start):
            global_pos = pos * self.num_replicas + self.rank
            key = (index, sample_seed(self.seed, self.epoch, global_pos), self.epoch)
            bad = self.known_bad.get(index)
            yield key if bad is None else (*key, bad)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("num_replicas", self.num_replicas) != self.num_replicas:
            # A different world size reshards the epoch: the saved position no longer means the same samples.
            self._resume = None
            return
        self.epoch = int(state["epoch"])
        self._resume = (int(state["epoch"]), int(state["consumed"]))
        self.consumed = int(state["consumed"])


class OnlineOrderSampler(ResumableSampler):
    """The online order of memory models (``tubelet.data.online``): this rank's batch slots each walk one
    stream of an :class:`~tubelet.data.online.OnlineClips` set, in time order; never shuffled (the set
    reshuffles its videos per epoch). Position and resume are :class:`ResumableSampler`'s, so a resumed
    run continues every stream at the clip where it stopped."""

    def __init__(self, dataset: OnlineClips, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 known_bad: Mapping[int, tuple[str, str]] | None = None) -> None:
        if dataset.num_streams != batch_size * num_replicas:
            raise ConfigError(
                f"the online order has {dataset.num_streams} streams but the loader has {num_replicas} process(es) x "
                f"batch {batch_size} = {batch_size * num_replicas} slots: every slot must be one stream")
        super().__init__(len(dataset), seed=seed, shuffle=False, num_replicas=num_replicas, rank=rank,
                         known_bad=known_bad)
        self.dataset = dataset
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self.dataset.steps * self.batch_size

    def order(self, epoch: int) -> list[int]:
        self.dataset.set_epoch(epoch)  # the layout (and its length) of this epoch, in the main process
        return online_order(self.dataset.num_streams, self.dataset.steps, self.rank, self.batch_size)


class AlternatingSampler(ResumableSampler):
    """The order of :class:`~tubelet.data.alternating.AlternatingTasks` (UTT's unified training: batches
    take turns between tasks, each task walking its own per-epoch permutation); never shuffled across
    tasks. Position and resume are :class:`ResumableSampler`'s, so a resumed run continues the alternation
    at the batch where it stopped."""

    def __init__(self, dataset: AlternatingTasks, batch_size: int, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, known_bad: Mapping[int, tuple[str, str]] | None = None) -> None:
        if dataset.batch_size != batch_size:
            raise ConfigError(f"the alternating tasks are laid out in batches of {dataset.batch_size} but the loader's "
                              f"batch is {batch_size}: a batch would mix tasks")
        super().__init__(len(dataset), seed=seed, shuffle=False, num_replicas=num_replicas, rank=rank,
                         known_bad=known_bad)
        self.dataset = dataset

    def __len__(self) -> int:
        return self.dataset.steps(self.num_replicas) * self.dataset.batch_size

    def order(self, epoch: int) -> list[int]:
        return self.dataset.order(self.rank, self.num_replicas)


def refuse_shuffled_memory_loader(loader: DataLoader, memory: bool, what: str = "the training loader") -> None:
    """A memory model trained on shuffled clips would attend to memory of unrelated clips: refused."""
    if not memory:
        return
    sampler = loader.batch_sampler.sampler if loader.batch_sampler is not None else loader.sampler
    if isinstance(sampler, OnlineOrderSampler):
        return
    raise ConfigError(
        f"{what} shuffles clips ({type(sampler).__name__}) while the model's memory is on: memory attention needs "
        "each batch slot to walk one video's clips in time order; train on tubelet.data.online.OnlineClips "
        "(its online order) or set model.memory: false")


class SeededDataset(Dataset):
    """Wraps a map-style dataset: ``ds[(index, seed, epoch)]`` reads ``base[index]`` under seeded RNGs.

    Datasets that draw from ``(seed, epoch, index)`` themselves get ``set_epoch(epoch)`` here, in the
    process that reads the sample: persistent worker processes hold their own copy of the dataset,
    which a ``set_epoch`` call in the main process would never reach.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            if len(key) == 4:  # a file that failed before: its failure, without reading it again
                from tubelet.data.mixing import BadSample

                return BadSample(key[0], *key[3])
            index, seed, epoch = key
            if epoch != self._epoch and hasattr(self.base, "set_epoch"):
                self.base.set_epoch(epoch)
            self._epoch = epoch
            with seeded_rng(seed):
                sample = self.base[index]
            if isinstance(sample, dict):
                sample = dict(sample)
                sample[SEED_KEY] = seed
            return sample
        return self.base[key]


def default_batch_collate(seed: int = 0) -> Callable[[list[Any]], Any]:
    """The data package's ``ClipCollate`` (drops and reports unreadable samples) when present."""
    try:
        from tubelet.data.mixing import ClipCollate
    except ImportError:
        return default_collate
    return ClipCollate(seed=seed)


class SeededCollate:
    """Collate under RNGs seeded from the batch's first sample seed (mixup/cutmix draws repeat on resume)."""

    def __init__(self, collate: Callable[[list[Any]], Any] | None = None) -> None:
        self.collate = collate or default_batch_collate()

    def __call__(self, samples: list[Any]) -> Any:
        seeds = [s.pop(SEED_KEY) for s in samples if isinstance(s, dict) and SEED_KEY in s]
        if not seeds:
            return self.collate(samples)
        with seeded_rng(sample_seed(seeds[0], 1, 0)):
            batch = self.collate(samples)
        if isinstance(batch, dict) and "video" in batch and len(seeds) == int(batch["video"].shape[0]):
            # the loaded samples' own seeds, for draws a method makes per sample (FLIP's masks)
            batch["sample_seed"] = torch.tensor(seeds, dtype=torch.int64)
        return batch


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose ``state_dict`` is its sampler's position (Lightning saves and restores it)."""

    @property
    def resumable_sampler(self) -> ResumableSampler:
        sampler = self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler
        assert isinstance(sampler, ResumableSampler)
        return sampler

    def state_dict(self) -> dict[str, int]:
        return self.resumable_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resumable_sampler.load_state_dict(state)


def _has_sample_fn(ds: Dataset) -> bool:
    return hasattr(ds, "__getitem__") and hasattr(ds, "__len__")


class TubeletDataModule(pl.LightningDataModule):
    """Train/val loaders over any map-style datasets whose samples are dicts."""

    def __init__(
        self,
        train: Dataset,
        val: Dataset | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        collate: Callable[[list[Any]], Any] | None = None,
        val_batch_size: int | None = None,
        device_transform: Callable[..., dict] | None = None,
        known_bad: Mapping[int, tuple[str, str]] | None = None,
        memory: bool = False,
    ) -> None:
        super().__init__()
        for name, ds in (("train", train), ("val", val)):
            if ds is not None and not _has_sample_fn(ds):
                raise TypeError(f"the {name} dataset must be map-style (__getitem__ and __len__)")
        self.train_set = train
        self.val_set = val
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.collate = collate
        self.val_batch_size = val_batch_size or batch_size
        self.sampler: ResumableSampler | None = None
        # data.device_transforms: training batches arrive as uint8 crops; the rest of the clip pipeline
        # and Mixup run after the transfer, on the device (tubelet.data.transforms.DeviceTransforms).
        self.device_transform = device_transform
        self.known_bad = known_bad  # failed files the sampler marks (FailureTracker.by_index)
        self.memory = memory  # the model carries memory from batch to batch: only the online order is accepted

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if (
            self.device_transform is not None
            and trainer is not None
            and trainer.training  # val loaders normalise their clips themselves
            and isinstance(batch, dict)
            and "video" in batch
        ):
            batch = self.device_transform(batch, epoch=trainer.current_epoch)
        return batch

    def train_dataloader(self) -> ResumableDataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if isinstance(self.train_set, OnlineClips):
            # every slot of every process is one stream (the builder knows only the per-process batch)
            self.train_set.set_num_streams(self.batch_size * world)
            self.sampler = OnlineOrderSampler(self.train_set, self.batch_size, seed=self.seed, num_replicas=world,
                                              rank=rank, known_bad=self.known_bad)
        elif isinstance(self.train_set, AlternatingTasks):
            self.sampler = AlternatingSampler(self.train_set, self.batch_size, seed=self.seed, num_replicas=world,
                                              rank=rank, known_bad=self.known_bad)
        else:
            self.sampler = ResumableSampler(len(self.train_set), seed=self.seed, num_replicas=world, rank=rank,
                                            known_bad=self.known_bad)
        per_rank = len(self.sampler)
        # A private generator: creating a loader iterator must not draw from the global RNG (it would on
        # resume, where the iterator is created at a different point than in an uninterrupted run).
        generator = torch.Generator().manual_seed(self.seed)
        loader = ResumableDataLoader(
            SeededDataset(self.train_set),
            batch_size=self.batch_size,
            sampler=self.sampler,
            drop_last=per_rank >= self.batch_size,
            num_workers=self.num_workers,
            collate_fn=SeededCollate(self.collate),
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )
        refuse_shuffled_memory_loader(loader, self.memory)
        return loader

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=default_batch_collate(self.seed),
            generator=torch.Generator().manual_seed(self.seed),
        )
