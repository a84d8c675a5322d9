"""Configs are code (big_vision style): `configs/headsup.py:SIZE` names a file and its get_config argument."""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

CONFIG_FILE = pathlib.Path(__file__).resolve().parents[2] / "configs" / "headsup.py"  # in a source checkout


def load_config(spec: str = f"{CONFIG_FILE}:tiny") -> ml_collections.ConfigDict:
    """`PATH[:ARG]`, as `--config` takes it -> the file's get_config(ARG) (or get_config() without ARG)."""
    path, _, arg = str(spec).partition(":")
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"{path}: config file not found (from --config {spec!r})")
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location("headsup_config", path))
    module.__spec__.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def size_config(size: str) -> ml_collections.ConfigDict:
    """The repository's `configs/headsup.py:SIZE`."""
    return load_config(f"{CONFIG_FILE}:{size}")
