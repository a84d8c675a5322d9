import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # the tests' own references (tests/reference.py)


def pytest_configure(config):
    """One persistent compilation cache for the whole session, in pytest's cache folder: the xdist workers,
    the test modules (each jits its own closures over the same programs) and every subprocess (CLI tests,
    tests/train_worker.py) reuse each other's compiled programs. Entries are keyed by the program, the jax
    version and the flags; `pytest --cache-clear` empties it. Every program is kept (minimum compile time 0):
    most compilations here are of small eager ops (model initialisers, ~0.1 s each on a loaded machine)."""
    if config.cache is None:  # -p no:cacheprovider
        return
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(config.cache.mkdir("jax_compilation_cache")))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if "jax" in sys.modules:  # environment variables are read when jax is imported
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
