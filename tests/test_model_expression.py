"""The latent expression model (issue 13): a residual over Z_neutral, trained on a frozen base run.

The base is an untrained tiny run (written in a tmp folder, no training step: cheap) whose decoder's
zero-initialised output heads get small random weights, so its Gaussians depend on Z and the render
loss has a gradient; its encoder still maps every frame to its own latent, which is what the latent loss
needs. Data: 3 synthetic subjects x 3 frames (neutral + 2 expressions) at 32 px.
"""
import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tensorboard_events import scalars
from train_worker import tiny_config

from headsup_jax.model.expression import ExpressionModel

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUBJECTS, FRAMES, STEPS = 3, 3, 40
ZERO_TOLERANCE = 0.05  # |F(Z_neutral, 0) - Z_neutral| / |Z_neutral| after training


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(the base run's TrainedModel, the synthetic expression captures)."""
    from headsup_jax.data.synth import SynthConfig, generate
    from headsup_jax.infer.trained import load_trained
    from headsup_jax.train.checkpoint import Checkpointer
    from headsup_jax.train.experiment import new_model, template_and_atlas
    from headsup_jax.train.optim import make_optimizer
    from headsup_jax.train.workdir import check_template, save_config

    root = tmp_path_factory.mktemp("expression")
    generate(root / "synth", SUBJECTS, SynthConfig(resolution=32, seed=5, texture_resolution=64, frames=FRAMES),
             progress=False)
    config = tiny_config(data=1)
    template, atlas = template_and_atlas(config)
    model = new_model(config, template, atlas)
    rng = np.random.default_rng(0)
    for layer in (model.decoder.head, model.decoder.texel_head):
        layer.kernel[...] = jnp.asarray(0.05 * rng.standard_normal(layer.kernel.shape), jnp.float32)
    optimizer = nnx.Optimizer(model, make_optimizer(config.optim), wrt=nnx.Param)
    workdir = root / "base"
    check_template(config, template, workdir)
    save_config(config, workdir)
    ckpt = Checkpointer(workdir, 1, 1)
    ckpt.save(0, nnx.state((model, optimizer)), None, force=True)
    ckpt.close()
    return load_trained(workdir), root / "synth"


def expression_config(base_workdir, source):
    """configs/expression.py:tiny, shortened; the random decoder's renders are no image of the truth, so the
    render loss is weighted down: expression frames differ from the neutral one in shape only (one light per
    subject), their latents by an MSE of ~1e-4, and at weight 0.05 the render gradient held the latent loss
    at 1.33e-4 -> 1.39e-4 over 40 steps (at 0.005: -> 0.80e-4)."""
    from headsup_jax.train.config import load_config

    config = load_config(f"{ROOT}/configs/expression.py:tiny")
    config.base, config.data.source = str(base_workdir), str(source)
    config.data.batch_size = SUBJECTS * FRAMES  # every pair each step: the logged loss is the whole set's
    config.optim.total_steps, config.optim.warmup_steps = STEPS, 10
    config.loss.render = 0.005
    config.log.every = 1
    return config


def test_zero_coefficients_give_z_neutral_exactly_at_init():
    model = ExpressionModel(16, 5, 32, 2, 4, rngs=nnx.Rngs(0))
    z = jax.random.normal(jax.random.key(1), (2, 4, 4, 16))
    b = jnp.asarray([[0, 0, 0, 0, 0], [0.3, 0, 1, 0, 0.5]], jnp.float32)
    np.testing.assert_array_equal(np.asarray(model(z, jnp.zeros((2, 5)))), np.asarray(z))
    np.testing.assert_array_equal(np.asarray(model(z, b)), np.asarray(z))  # residual zero-initialised
    # ...but the coefficients reach the zero-initialised projection: its gradient depends on them
    grad = lambda c: nnx.grad(lambda m: jnp.sum(m(z, c) * z))(model).latent_out.kernel[...]  # noqa: E731
    assert float(jnp.abs(grad(b) - grad(jnp.zeros((2, 5)))).max()) > 1e-3


def test_wrong_coefficient_count_is_a_clear_error():
    model = ExpressionModel(16, 5, 32, 1, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"shape \[2, 4\], expected \[2, 5\]"):
        model(jnp.zeros((2, 4, 4, 16)), jnp.zeros((2, 4)))


def test_data_without_expression_frames_is_refused_by_folder(tmp_path, base):
    from headsup_jax.train.expression import ExpressionDataError, subject_frames

    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "cameras.json").write_text('{"cameras": []}')
    with pytest.raises(ExpressionDataError, match="no subject with a neutral and an expression frame"):
        subject_frames(tmp_path)


@pytest.fixture(scope="module")
def expression_run(base, tmp_path_factory):
    """(workdir, config, final metrics) of the tiny expression config trained STEPS steps on the base."""
    from headsup_jax.train.expression import train_expression

    trained, source = base
    config = expression_config(trained.workdir, source)
    workdir = tmp_path_factory.mktemp("expression_run")
    return workdir, config, train_expression(config, workdir, progress=False, trained=trained)


@pytest.fixture(scope="module")
def pairs(base, expression_run):
    from headsup_jax.train.expression import expression_pairs

    trained, source = base
    return expression_pairs(trained, source, trained.config.data.num_inputs, 2, expression_run[1].loss.background)


def test_training_lowers_the_latent_loss_and_keeps_zero_coefficients_neutral(base, expression_run, pairs):
    from headsup_jax.train.expression import load_expression

    trained, _ = base
    workdir, _, final = expression_run
    latent = scalars(workdir / "tensorboard", "loss/latent")
    render = scalars(workdir / "tensorboard", "loss/render")
    assert sorted(latent) == list(range(1, STEPS + 1))
    assert latent[STEPS] < 0.7 * latent[1], latent
    assert render[STEPS] < render[1], render
    assert np.isfinite(final["loss"])

    model, saved, _ = load_expression(workdir, trained=trained)
    assert saved.base == str(trained.workdir)
    z0 = np.asarray(model(jnp.asarray(pairs.z_neutral), jnp.zeros_like(pairs.coefficients)))
    drift = np.linalg.norm(z0 - pairs.z_neutral) / np.linalg.norm(pairs.z_neutral)
    # with their coefficients, the expression frames' latents are nearer their encodings than Z_neutral is
    z = np.asarray(model(jnp.asarray(pairs.z_neutral), jnp.asarray(pairs.coefficients)))
    moved = pairs.coefficients.any(-1)
    err = lambda a: np.linalg.norm((a - pairs.z_target)[moved])  # noqa: E731
    print(f"latent MSE {latent[1]:.4g} -> {latent[STEPS]:.4g}, render L1 {render[1]:.4g} -> {render[STEPS]:.4g}, "
          f"zero-coefficient drift {drift:.4f} of |Z|, expression error {err(z):.4g} vs {err(pairs.z_neutral):.4g}")
    assert drift < ZERO_TOLERANCE, drift
    assert moved.sum() == SUBJECTS * (FRAMES - 1)
    assert err(z) < err(pairs.z_neutral), (err(z), err(pairs.z_neutral))


def test_latent_animation_decodes_the_models_latents(base, expression_run, pairs):
    from headsup_jax.data.capture import load_capture
    from headsup_jax.infer.animate import HeadFileError, animate_latent, capture_latent, neutral_head
    from headsup_jax.infer.reconstruct import reconstruct
    from headsup_jax.train.expression import load_expression

    trained, source = base
    model = load_expression(expression_run[0], trained=trained)[0]
    capture = load_capture(source / "synth_000000" / "frame_00")
    head = neutral_head(trained.template, trained.atlas, reconstruct(trained, capture).head)
    coeffs = np.stack([np.zeros_like(pairs.coefficients[1]), pairs.coefficients[1]])  # neutral, frame_01
    with pytest.raises(HeadFileError, match="latent Z, which a PLY file does not hold"):
        animate_latent(head, coeffs, (model, trained.model))
    z = capture_latent(trained, capture)
    np.testing.assert_allclose(z, pairs.z_neutral[0], atol=1e-4)  # the latent training used (jitted there)
    head = dataclasses.replace(head, latent=z)
    frames = animate_latent(head, coeffs, (model, trained.model))  # [2, G]
    expected, _ = trained.model.head_gaussians(trained.model.decoder(model(jnp.asarray(z)[None].repeat(2, 0),
                                                                           jnp.asarray(coeffs))))
    for name in ("means", "quats", "scales", "opacities", "sh"):
        np.testing.assert_allclose(getattr(frames, name), getattr(expected, name), atol=1e-5, err_msg=name)
    from_neutral = np.abs(np.asarray(frames.means) - head.gaussians.means).max(-1)  # [2, G] metres
    print(f"latent animation: max |mean - reconstruction| zero coefficients {from_neutral[0].max():.2e} m, "
          f"frame_01 {from_neutral[1].max():.2e} m")
    assert from_neutral[0].max() < from_neutral[1].max()
    with pytest.raises(ValueError, match=r"expected \[F, "):
        animate_latent(head, coeffs[:, :3], (model, trained.model))
