"""Errors in what the user gave us (files, flags, configs), one type per area.

The `headsup` command prints an `InputError` as one line, `headsup: error: MESSAGE`, and exits 2;
any other exception is a bug and keeps its traceback. Messages name the file, line or field at fault.
"""


class InputError(ValueError):
    """Bad user input: the message alone says what is wrong and where."""


class TemplateError(InputError):
    """A head template file (OBJ, ICT-FaceKit, FLAME) that cannot be used."""


class TemplateNotFoundError(TemplateError, FileNotFoundError):
    """A template file or folder that does not exist."""


class ConfigError(InputError):
    """A training config or `headsup train`/`eval` flag that cannot be used."""


class BackendError(InputError):
    """The machine does not offer what the run asked for (`--require_accelerator` on a CPU-only JAX)."""
