"""The one unpickler for files we did not write: only an explicit allow-list of globals is resolved.

A pickle runs code only through the globals it names (a REDUCE calls one, a BUILD may call its
`__setstate__`); `find_class` resolves each name before anything is called, so a name outside the
allow-list (os.system, builtins.eval, ...) raises `UnsafePickleError` naming the file and the global and
nothing in the file runs. Dicts, lists, tuples, str, bytes and numbers are opcodes, not globals.
"""
from __future__ import annotations

import collections
import pickle
from collections.abc import Mapping

import numpy as np
import scipy.sparse

from headsup_jax.errors import InputError
from headsup_jax.limits import check_file_size

# NumPy arrays, dtypes and scalars (numpy 1.x pickles say numpy.core, 2.x numpy._core; protocol 5 uses
# _frombuffer). Protocol 2's _codecs.encode (Python 3 bytes) is not admitted.
NUMPY_GLOBALS = {
    **{(f"{core}.multiarray", name): getattr(np._core.multiarray, name)
       for core in ("numpy.core", "numpy._core") for name in ("_reconstruct", "scalar")},
    **{(f"{core}.numeric", "_frombuffer"): np._core.numeric._frombuffer for core in ("numpy.core", "numpy._core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
# scipy.sparse matrices (FLAME's J_regressor) under their old (scipy < 1.8: scipy.sparse.csc) and current
# (scipy.sparse._csc) module names; their state is a dict of NumPy arrays.
SPARSE_GLOBALS = {(f"scipy.sparse.{prefix}{fmt}", f"{fmt}_matrix"): getattr(scipy.sparse, f"{fmt}_matrix")
                  for fmt in ("csc", "csr", "coo") for prefix in ("", "_")}


class UnsafePickleError(InputError, pickle.UnpicklingError):
    """A pickle that names a global outside the allow-list (nothing it names is called)."""


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file, path, allowed: Mapping, substitutes: Mapping, encoding: str):
        super().__init__(file, encoding=encoding)
        self.path, self.allowed, self.substitutes = path, allowed, substitutes

    def find_class(self, module, name):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        package = module.partition(".")[0]
        if package in self.substitutes:
            return self.substitutes[package]
        raise UnsafePickleError(f"{self.path}: refusing to load global '{module}.{name}': it is not on the "
                                "allow-list of data types (NumPy arrays and containers of them)")


def load_pickle(path, allowed: Mapping = NUMPY_GLOBALS, substitutes: Mapping | None = None, encoding: str = "ASCII"):
    """Unpickle `path` (within the size cap) resolving only the `allowed` {(module, name): object} globals;
    `substitutes` maps a top-level package to an inert stand-in class for any of its names (FLAME's chumpy
    arrays). Anything else raises `UnsafePickleError` before it is called. `encoding` as `pickle.load`'s
    (latin1 for Python 2 pickles of NumPy arrays)."""
    with open(check_file_size(path), "rb") as f:
        return _AllowListUnpickler(f, path, allowed, substitutes or {}, encoding).load()
