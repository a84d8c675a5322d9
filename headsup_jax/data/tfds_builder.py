"""TFDS builder: capture folders -> ArrayRecord shards (no TensorFlow needed), one example per subject/frame.

Images and masks are stored as their encoded PNG/JPEG bytes. Splits hold whole subjects (held-out
identities): a seeded permutation of the sorted subject names, recorded in the dataset's metadata.

    build_dataset(capture_dir, data_dir, split_seed=0)  # writes <data_dir>/head_captures/1.0.0/
    source = load_source(<data_dir>/head_captures/1.0.0, "train")  # random access: source[i] -> dict
"""
from __future__ import annotations

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from headsup_jax.data.blendshapes import ARKIT_BLENDSHAPES
from headsup_jax.data.capture import CaptureError, check_capture, find_captures

SPLITS = ("train", "validation", "test")


def split_subjects(subjects, seed: int, validation: float = 0.1, test: float = 0.1) -> dict[str, list[str]]:
    """Assign whole subjects to splits with a seeded permutation; the test and validation sets come first."""
    names = sorted(set(subjects))
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    n_test, n_val = int(round(test * len(names))), int(round(validation * len(names)))
    if n_test + n_val >= len(names) and names:
        raise ValueError(f"{len(names)} subjects leave none for training with validation={validation}, test={test}")
    return {"test": sorted(order[:n_test]), "validation": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


def _features() -> tfds.features.FeaturesDict:
    bytes_list = tfds.features.Tensor(shape=(None,), dtype=np.object_)
    return tfds.features.FeaturesDict({
        "subject": tfds.features.Text(),
        "frame": tfds.features.Text(),
        "camera_ids": bytes_list,
        "images": bytes_list,  # encoded PNG/JPEG, one per camera
        "masks": bytes_list,  # encoded PNG per camera, or b"" when the capture has no masks
        "K": tfds.features.Tensor(shape=(None, 3, 3), dtype=np.float32),
        "world_to_cam": tfds.features.Tensor(shape=(None, 4, 4), dtype=np.float32),
        "width": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "height": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "blendshapes": tfds.features.Tensor(shape=(len(ARKIT_BLENDSHAPES),), dtype=np.float32),  # ARKit order
    })


def capture_example(capture) -> dict:
    """A validated `Capture` as one example (reads the encoded files)."""
    cams = capture.cameras
    weights = capture.blendshapes or {}
    return {
        "subject": capture.subject,
        "frame": capture.frame,
        "camera_ids": np.array([c.id.encode() for c in cams], dtype=object),
        "images": np.array([capture.image_files[c.id].read_bytes() for c in cams], dtype=object),
        "masks": np.array([capture.mask_files[c.id].read_bytes() if capture.mask_files else b"" for c in cams],
                          dtype=object),
        "K": np.stack([c.K for c in cams]).astype(np.float32),
        "world_to_cam": np.stack([c.world_to_cam for c in cams]).astype(np.float32),
        "width": np.array([c.width for c in cams], np.int32),
        "height": np.array([c.height for c in cams], np.int32),
        "blendshapes": np.array([weights.get(n, 0.0) for n in ARKIT_BLENDSHAPES], np.float32),
    }


class HeadCaptures(tfds.core.GeneratorBasedBuilder):
    """Multi-view head captures from a folder in the capture format (headsup_jax.data.capture)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Capture folders: encoded images and masks, cameras, ARKit blendshapes."}

    def __init__(self, *, capture_dir=None, split_seed: int = 0, validation: float = 0.1, test: float = 0.1,
                 skip_invalid: bool = False, **kwargs):
        self._capture_dir = None if capture_dir is None else pathlib.Path(capture_dir)
        self._split_seed, self._fractions = split_seed, {"validation": validation, "test": test}
        self._skip_invalid = skip_invalid
        self._captures = self._skipped = self._assignment = None
        if self._capture_dir is not None:
            self._scan()
        super().__init__(**kwargs)

    def _scan(self) -> None:
        """Validate every capture now, so a bad one fails before any shard is written (or is skipped)."""
        self._captures, self._skipped = [], []
        for subject, frame, path in find_captures(self._capture_dir):
            capture, problems = check_capture(path, subject, frame)
            if problems and not self._skip_invalid:
                raise CaptureError(problems[0])
            if problems:
                self._skipped.append({"subject": subject, "frame": frame, "problem": str(problems[0])})
            else:
                self._captures.append(capture)
        if not self._captures:
            raise ValueError(f"no valid capture folders under {self._capture_dir}")
        self._assignment = split_subjects([c.subject for c in self._captures], self._split_seed, **self._fractions)

    def _info(self) -> tfds.core.DatasetInfo:
        metadata = None
        if self._assignment is not None:
            metadata = tfds.core.MetadataDict(split_seed=self._split_seed, fractions=self._fractions,
                                              subjects=self._assignment, skipped=self._skipped,
                                              capture_dir=str(self._capture_dir))
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=_features(),
                                     metadata=metadata)

    def _split_generators(self, dl_manager):
        if self._captures is None:
            raise ValueError("HeadCaptures needs capture_dir to generate data")
        return {split: self._generate_examples(set(self._assignment[split]))
                for split in SPLITS if self._assignment[split]}

    def _generate_examples(self, subjects):
        for capture in self._captures:
            if capture.subject in subjects:
                yield f"{capture.subject}/{capture.frame}", capture_example(capture)


def build_dataset(capture_dir, data_dir, split_seed: int = 0, validation: float = 0.1, test: float = 0.1,
                  skip_invalid: bool = False) -> pathlib.Path:
    """Validate `capture_dir`, write the ArrayRecord shards under `data_dir`; returns the dataset folder."""
    builder = HeadCaptures(capture_dir=capture_dir, split_seed=split_seed, validation=validation, test=test,
                           skip_invalid=skip_invalid, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return pathlib.Path(builder.data_dir)


def load_source(dataset_dir, split: str):
    """Random-access source of a built split: len(source), source[i] -> example dict (numpy, bytes)."""
    return tfds.builder_from_directory(str(dataset_dir)).as_data_source(split=split)


def dataset_metadata(dataset_dir) -> dict:
    """The split assignment and build options recorded in the dataset info."""
    return dict(tfds.builder_from_directory(str(dataset_dir)).info.metadata)
