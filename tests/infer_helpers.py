"""A trained-for-2-steps tiny run and capture folders for the infer tests (built in tmp folders)."""
import pathlib

from data_helpers import make_capture

H, W = 32, 24  # tiny_config's image size


def trained_workdir(root: pathlib.Path) -> pathlib.Path:
    """headsup_jax.train.loop.train for 2 steps of the shrunk tiny config on 4 random capture folders."""
    from train_worker import tiny_config

    from headsup_jax.data.tfds_builder import build_dataset
    from headsup_jax.train import loop

    for s in range(4):
        make_capture(root / "captures" / f"subject{s}", n=6, width=W, height=H, seed=s)
    config = tiny_config()
    config.data.source = str(build_dataset(root / "captures", root / "tfds", validation=0.0, test=0.0))
    config.data.batch_size = 2
    config.optim.total_steps = 2
    config.log.images_every = 0
    workdir = root / "run"
    loop.train(config, workdir, progress=False)
    return workdir


def shared_workdir(tmp_path_factory) -> pathlib.Path:
    """One trained run per test session (pytest process), shared by the infer test modules."""
    root = tmp_path_factory.getbasetemp() / "infer_tiny_run"
    if not (root / "run" / "config.json").exists():
        root.mkdir(exist_ok=True)
        trained_workdir(root)
    return root / "run"
