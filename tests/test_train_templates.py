"""Templates without 68 landmarks (FLAME, OBJ) train (issue 9): the eye/mouth texels are computed only
when a region weight is > 0, landmarks can be supplied, and the error names config.loss.regions."""
from __future__ import annotations

import json

import numpy as np
import pytest

from headsup_jax.errors import ConfigError
from headsup_jax.geometry.procedural import procedural_template
from headsup_jax.train.experiment import build_experiment
from headsup_jax.train.sharding import global_batch
from headsup_jax.train.step import TrainStep
from test_geometry_loaders import flame_files
from train_worker import synthetic_batch, tiny_config


@pytest.fixture(scope="module")
def flame(tmp_path_factory):
    small = procedural_template(num_rings=10, segments=12, num_identity=4)
    path, _ = flame_files(small, tmp_path_factory.mktemp("flame"), "npz")
    return f"flame:{path}", small


def _config(template):
    config = tiny_config()
    config.template = template
    config.data.batch_size = 2
    return config


def test_flame_template_trains_one_step_without_region_losses(flame):
    config = _config(flame[0])
    config.loss.regions.eyes = config.loss.regions.mouth = 0.0
    experiment = build_experiment(config)
    assert experiment.template.landmarks is None and experiment.atlas.count > 0
    assert not np.asarray(experiment.supervision.feature_texels[...]).any()
    state, metrics = TrainStep(experiment)(experiment.state, global_batch(synthetic_batch(config, batch=2),
                                                                           experiment.mesh))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss/l1"]) > 0


def test_region_losses_on_a_template_without_landmarks_name_the_config(flame):
    with pytest.raises(ConfigError, match=r"config.loss.regions = .*eyes.*config.template_landmarks"):
        build_experiment(_config(flame[0]))


def test_supplied_landmarks_place_the_eye_and_mouth_texels(flame, tmp_path):
    template, small = flame
    # 68 vertex indices: the eyes (36-47) and the mouth (48-67) on the front of the small head
    v = small.vertices
    front = np.flatnonzero(v[:, 2] > 0.5 * v[:, 2].max())
    upper, lower = front[v[front, 1] > np.median(v[front, 1])], front[v[front, 1] <= np.median(v[front, 1])]
    left, right = upper[v[upper, 0] > 0], upper[v[upper, 0] <= 0]
    landmarks = np.zeros(68, int)
    landmarks[36:42], landmarks[42:48] = right[:6] if len(right) >= 6 else right[0], left[:6] if len(left) >= 6 else left[0]
    landmarks[48:68] = lower[np.argsort(v[lower, 0])][np.linspace(0, len(lower) - 1, 20).astype(int)]
    path = tmp_path / "landmarks.json"
    path.write_text(json.dumps(landmarks.tolist()))
    config = _config(template)
    config.template_landmarks = str(path)
    experiment = build_experiment(config)
    np.testing.assert_array_equal(experiment.template.landmarks, landmarks)
    texels = np.asarray(experiment.supervision.feature_texels[...])  # [G, 2]
    assert texels[:, 0].any() and texels[:, 1].any()
    (tmp_path / "short.json").write_text("[1, 2, 3]")
    config.template_landmarks = str(tmp_path / "short.json")
    with pytest.raises(ConfigError, match="short.json: config.template_landmarks needs 68"):
        build_experiment(config)
