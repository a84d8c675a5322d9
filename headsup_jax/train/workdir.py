"""A run's folder: a local path or a bucket URI (etils.epath), and what it records about the run.

`config.json` (the run's config, with the template resolved) and `template.json` (the template's spec
and a hash of its geometry) sit beside the checkpoints. A run resumed with a config that changes the
state's structure, or on a machine where the template resolves differently, is refused at start with
the differing keys named, rather than failing deep inside Orbax.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib

import jax
import numpy as np
from etils import epath
from ml_collections import ConfigDict

from headsup_jax.fileio import write_json_atomic
from headsup_jax.errors import ConfigError

log = logging.getLogger(__name__)

# Config keys (dotted prefixes) that shape the train state or what it means: a checkpoint cannot be
# resumed under a config that changes one of them.
STATE_KEYS = ("size", "template", "atlas_resolution", "model", "background", "compute_dtype", "optim.name",
              "optim.grad_accum", "on_nonfinite")


def workdir_path(path) -> epath.Path:
    """`path` as an epath.Path: local folders and gs:// (s3://, ...) URIs alike (pathlib mangles URIs)."""
    return epath.Path(path)


def load_kind_config(workdir, kind: str, flag: str, config_file: str) -> ConfigDict:
    """The config.json of a run of `kind` (an expression or regressor run), refused naming `flag` (the
    option that gave the folder) and `config_file` (what trains one) when it is missing or another kind."""
    path = workdir_path(workdir) / "config.json"
    if not path.exists():
        raise ConfigError(f"{path}: not found; {flag} must be the folder of a run of {config_file}")
    config = ConfigDict(json.loads(path.read_text()))
    if config.get("kind") != kind:
        raise ConfigError(f"{path}: not a run of {config_file} (kind {config.get('kind')!r}, expected {kind!r})")
    return config


def resumable_state(workdir, config, model, optimizer):
    """(graphdef, state of (model, nnx.Optimizer), Checkpointer, step) of `model` and `optimizer`, restored
    from the newest checkpoint of `workdir` when it has one (step 0 otherwise; the caller closes it)."""
    from flax import nnx

    from headsup_jax.train.checkpoint import Checkpointer

    graphdef, state = nnx.split((model, nnx.Optimizer(model, optimizer, wrt=nnx.Param)))
    ckpt = Checkpointer(workdir, config.checkpoint.every, config.checkpoint.keep)
    step = 0
    if ckpt.latest_step is not None:
        step, state = ckpt.restore(state)
        log.info("resumed from step %d", step)
    return graphdef, state, ckpt, step


def restore_newest(workdir, config, model, optimizer) -> tuple[int, object]:
    """(step, model) of (model, optimizer) restored from the newest checkpoint of `workdir`."""
    from flax import nnx

    graphdef, state, ckpt, step = resumable_state(workdir, config, model, optimizer)
    ckpt.close()
    if step == 0:
        raise ConfigError(f"{workdir}: no checkpoint to load (train first)")
    return step, nnx.merge(graphdef, state)[0]


def resolve_template(config) -> ConfigDict:
    """A copy of `config` with template "auto" resolved (the ICT-FaceKit archive when present, else the
    built-in procedural head), so what is saved says which template the run used."""
    config = ConfigDict(config.to_dict())
    if config.template == "auto":
        from headsup_jax.geometry.loaders import ict_path

        config.template = "ict" if ict_path().exists() else "procedural"
    return config


def template_hash(template) -> str:
    """sha256 of the template's geometry (vertices, faces, UVs, per-face UV indices)."""
    h = hashlib.sha256()
    for a in (template.vertices, template.faces, template.uvs, template.face_uvs):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_diff(old: dict, new: dict) -> dict:
    """Dotted key -> (old, new) for every value that differs (missing values are None)."""
    a, b = _flat(old), _flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def _is_state_key(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in STATE_KEYS)


def _json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def check_config(config, workdir) -> None:
    """Compares `config` with the one saved in `workdir` (if any): refuses a change of any STATE_KEYS
    (ConfigError listing the differing keys), warns about other changes."""
    path = workdir_path(workdir) / "config.json"
    if not path.exists():
        return
    diff = config_diff(json.loads(path.read_text()), _json(config))
    fatal = {k: v for k, v in diff.items() if _is_state_key(k)}
    if fatal:
        lines = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in fatal.items())
        raise ConfigError(f"{path}: this workdir holds a run of another model; differing keys: {lines} "
                          "(use a new --workdir, or the saved config)")
    if diff:
        log.warning("config differs from %s in %s; the new values are used and saved", path,
                    ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in diff.items()))


def check_writable(workdir) -> None:
    """ConfigError unless a local `workdir` is a folder this process may write, or can be made one; checked
    without writing anything (bucket URIs are left to their first write)."""
    path = workdir_path(workdir)
    if "://" in str(path):
        return
    existing = pathlib.Path(str(path)).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--workdir {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {path}: {existing} is not writable by this user (or is on a read-only disk)")


def save_config(config, workdir) -> None:
    """Writes config.json (process 0)."""
    if jax.process_index() == 0:
        write_json_atomic(workdir_path(workdir) / "config.json", _json(config))


def check_template(config, template, workdir) -> None:
    """Records the template's spec and hash in template.json, or refuses a template that differs from
    the recorded one (a resumed run must anchor its Gaussians to the same surface)."""
    path = workdir_path(workdir) / "template.json"
    record = {"template": config.template, "sha256": template_hash(template)}
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != record:
            raise ConfigError(f"{path}: the run was trained on template {saved['template']!r} "
                              f"(sha256 {saved['sha256'][:12]}), this config loads {record['template']!r} "
                              f"(sha256 {record['sha256'][:12]}); resume where that template is available")
    elif jax.process_index() == 0:
        write_json_atomic(path, record)
