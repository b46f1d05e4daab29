"""LightningDataModule over a SemanticKITTI-layout root (real or the embedded synthetic one)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from pcseg import PROJECT_ROOT
from pcseg.data.collate import collate_point_clouds
from pcseg.data.features import feature_channels
from pcseg.data.labels import LabelMap, load_label_map
from pcseg.data.samplers import evaluation_sampler
from pcseg.data.semantickitti import SemanticKITTIDataset
from pcseg.data.validation import (
    DEFAULT_MIN_POINTS,
    DEFAULT_MIN_VOXELS,
    check_policy,
    check_voxel_size,
)

#: Where the embedded synthetic dataset lives when ``root`` is not given.
DEFAULT_SYNTHETIC_ROOT = PROJECT_ROOT / "data" / "synthetic_kitti"
SPLIT_ALIASES = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class SemanticKITTIDataModule(pl.LightningDataModule):
    """Train/val/test loaders of :class:`SemanticKITTIDataset`, packed into ``PointBatch``.

    Args:
        root: dataset root; None means the embedded synthetic dataset (generated on first use).
        sequences: sequences per split ``{"train": [...], "valid": [...], "test": [...]}``;
            None takes the label yaml's official split.
        label_config: path of the label yaml (None: SemanticKITTI's).
        generate: build the synthetic dataset into ``root`` if it is absent.
        voxel_size: metres, > 0, or None for full resolution (0 or less: ValueError). The
            defaults agree with configs/data/semantickitti.yaml (a test checks it).
        augment: training-only transform, a ``Compose`` of transforms.py (geometry and
            remission dropout) or a plain ``f(coord, rng) -> coord``.
        features: input feature names (see features.py).
        test_requires_labels: the official test split ships no labels; set True to demand them.
        on_bad_scan: ``skip`` (default): a bad scan (corrupt, NaN/inf, too few points, label
            file missing or wrong) is left out of its batch and reported at the end of the epoch
            by :class:`~pcseg.callbacks.BadScanLogger`, so one bad file never kills a long run;
            ``raise``: stop with the error naming the file (what evaluate.py uses).
        min_points: fewest points a scan file may have (counted before voxelisation).
        min_voxels: fewest voxels (distinct positions without voxelisation) a scan may have;
            fewer is a bad scan (``scan_degenerate``: skipped in training, an error in
            evaluation).
        knn_k: the model's neighbour count K (the configs pass ``model.net.k``); ValueError
            when ``min_voxels`` is below it. None: not checked.
        sensor: the simulated LiDAR when ``generate`` (a preset of configs/sensors such as
            ``vlp16``, or a sensor YAML path; None: HDL-64E). With ``root`` None the dataset
            lives in a root named after the sensor, so datasets never mix.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        sequences: Mapping[str, Sequence[int]] | None = None,
        label_config: str | Path | None = None,
        generate: bool = False,
        batch_size: int = 2,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        voxel_size: float | None = 0.05,
        augment: Augment | None = None,
        features: Sequence[str] = ("height", "remission", "range"),
        pin_memory: bool = False,
        persistent_workers: bool = True,
        test_requires_labels: bool = False,
        on_bad_scan: str = "skip",
        min_points: int = DEFAULT_MIN_POINTS,
        sensor: str | None = None,
        min_voxels: int = DEFAULT_MIN_VOXELS,
        knn_k: int | None = None,
    ) -> None:
        super().__init__()
        self.sensor = sensor
        self.root = Path(root) if root is not None else DEFAULT_SYNTHETIC_ROOT
        if root is None and sensor is not None:
            from pcseg.data.synthetic import sensor_root

            self.root = sensor_root(sensor, DEFAULT_SYNTHETIC_ROOT)
        self.label_map: LabelMap = load_label_map(label_config)
        self.split_sequences = {
            SPLIT_ALIASES.get(k, k): list(v)
            for k, v in (sequences if sequences is not None else self.label_map.split).items()
        }
        self.generate = generate
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.voxel_size = check_voxel_size(voxel_size)
        self.augment = augment
        self.features = tuple(features)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.test_requires_labels = test_requires_labels
        self.on_bad_scan = check_policy(on_bad_scan)
        self.min_points = min_points
        if knn_k is not None and min_voxels < knn_k:
            raise ValueError(
                f"data.min_voxels={min_voxels} is below the model's k={knn_k}: a scan with "
                "fewer voxels than k cannot fill a neighbour window; raise data.min_voxels"
            )
        self.min_voxels = min_voxels
        self.datasets: dict[str, SemanticKITTIDataset] = {}

    @property
    def in_channels(self) -> int:
        """Input feature width C for the network."""
        return feature_channels(self.features)

    @property
    def num_classes(self) -> int:
        return self.label_map.num_classes

    def prepare_data(self) -> None:
        """Generate the synthetic dataset if asked and absent (Lightning calls this on rank 0)."""
        if self.generate:
            from pcseg.data.synthetic import ensure_dataset, load_sensor

            ensure_dataset(self.root, lidar=load_sensor(self.sensor))

    def sequences(self, split: str) -> list[int]:
        key = SPLIT_ALIASES.get(split, split)
        if key not in self.split_sequences:
            raise KeyError(f"split '{split}' not configured; have {sorted(self.split_sequences)}")
        return self.split_sequences[key]

    def dataset(self, split: str) -> SemanticKITTIDataset:
        """The dataset of ``split`` ('train', 'val'/'valid' or 'test'), built once."""
        key = SPLIT_ALIASES.get(split, split)
        if key not in self.datasets:
            self.datasets[key] = SemanticKITTIDataset(
                self.root,
                self.sequences(key),
                label_map=self.label_map,
                voxel_size=self.voxel_size,
                augment=self.augment if key == "train" else None,
                features=self.features,
                require_labels=key != "test" or self.test_requires_labels,
                on_bad_scan=self.on_bad_scan,
                min_points=self.min_points,
                min_voxels=self.min_voxels,
            )
        return self.datasets[key]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",)}
        for split in wanted.get(stage or "fit", ("train", "valid")):
            self.dataset(split)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        """A loader of ``split``. Shuffled (training) loaders are left to Lightning, which
        injects a seeded ``DistributedSampler`` under DDP and sets its epoch; in-order
        (evaluation) loaders get an :class:`UnpaddedDistributedSampler` when a process group
        of several processes is initialised, so every scan is scored exactly once."""
        dataset = self.dataset(split)
        sampler = None if shuffle else evaluation_sampler(dataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_point_clouds,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)
