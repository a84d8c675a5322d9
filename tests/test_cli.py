"""The `headsup` command: help texts, one-line input errors (exit 2) vs tracebacks for bugs, the train/eval
flags (--require_accelerator, eval-only --split/--subjects), the backend line and the log levels."""
import argparse
import logging
import os
import subprocess
import sys

import jax
import pytest

from headsup_jax.cli import ABSL_COMMANDS, COMMAND_GROUPS, COMMANDS, build_parser, main
from headsup_jax.data.capture import CaptureError
from headsup_jax.errors import BackendError, InputError, TemplateError, TemplateNotFoundError
from headsup_jax.geometry import loaders
from headsup_jax.geometry.obj import read_obj
from headsup_jax.train.cli import check_backend, setup_logging

BAD_OBJ = "v 0 0 0\nv 1 0 0\nf 1 2 3\n"  # line 3 names vertex 3 of 2
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "headsup.py")


def _subparsers(parser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _headsup(*args, cwd, **env):
    """`headsup ARGS` in a fresh process (absl flags are process-global) -> (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "headsup_jax.cli", *args], cwd=cwd, env=dict(os.environ, **env),
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_top_level_help_describes_the_tool_and_lists_every_group(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "feed-forward 3D Gaussian heads from calibrated multi-view captures" in out
    assert "registers itself" not in out  # the developer docstring is not the description
    assert "headsup COMMAND --help" in out
    helps = {a.dest: a.help for a in _subparsers(build_parser())._choices_actions}
    assert set(helps) == set(ABSL_COMMANDS) | set(COMMAND_GROUPS) | set(COMMANDS)
    for name, text in helps.items():
        assert text and f"{name}  " in out and text.split()[0] in out


def test_every_subcommand_and_option_has_help():
    groups = _subparsers(build_parser()).choices
    for group in COMMAND_GROUPS:
        commands = _subparsers(groups[group])
        assert commands.choices, group
        for action in commands._choices_actions:
            assert action.help, f"headsup {group} {action.dest}"
        for name, parser in commands.choices.items():
            for action in parser._actions:
                assert action.help, f"headsup {group} {name}: {action.option_strings or action.dest}"
    for name in COMMANDS:
        for action in groups[name]._actions:
            assert action.help, f"headsup {name}: {action.option_strings or action.dest}"


def test_bad_template_obj_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.obj").write_text(BAD_OBJ)
    assert main(["template", "preview", "--template", "bad.obj", "--out", "p.png"]) == 2
    out, err = capsys.readouterr()
    assert err == "headsup: error: bad.obj:3: face references vertex 3 but the file has 2 vertices so far\n"
    assert main(["template", "preview", "--template", "missing.obj"]) == 2
    assert capsys.readouterr().err == "headsup: error: missing.obj: template OBJ not found\n"
    assert not (tmp_path / "p.png").exists()


def test_input_errors_have_one_type_per_area(tmp_path):
    (tmp_path / "bad.obj").write_text(BAD_OBJ)
    with pytest.raises(TemplateError, match="bad.obj:3: face references vertex 3"):
        read_obj(tmp_path / "bad.obj")
    with pytest.raises(TemplateNotFoundError) as missing:
        loaders.load_template(str(tmp_path / "missing.obj"))
    assert isinstance(missing.value, FileNotFoundError)  # callers catching FileNotFoundError keep working
    assert issubclass(CaptureError, InputError) and issubclass(TemplateError, InputError)
    assert issubclass(InputError, ValueError)


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(spec):
        raise RuntimeError("a bug")

    monkeypatch.setattr(loaders, "load_template", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["template", "preview", "--template", "procedural"])


def test_broken_capture_one_line_for_build_report_for_validate(tmp_path, capsys):
    (tmp_path / "caps" / "s1" / "images").mkdir(parents=True)
    (tmp_path / "caps" / "s1" / "cameras.json").write_text("{")
    assert main(["data", "build", str(tmp_path / "caps"), "--out", str(tmp_path / "tfds")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headsup: error: subject 's1', file cameras.json, field json: unreadable")
    assert err.count("\n") == 1
    assert main(["data", "validate", str(tmp_path / "caps")]) == 1  # the validator reports, it does not raise
    assert "FAIL s1" in capsys.readouterr().out


def test_check_backend_line_and_cpu_refusal():
    line = check_backend(False)
    assert line == (f"backend={jax.default_backend()} devices={jax.device_count()} "
                    f"local={jax.local_device_count()} processes={jax.process_count()}")
    if jax.default_backend() == "cpu":
        with pytest.raises(BackendError, match="--require_accelerator: JAX found no accelerator \\(backend=cpu"):
            check_backend(True)
    else:
        assert check_backend(True) == line


@pytest.fixture
def restore_log_levels():
    names = ["", "headsup_jax"]
    saved = [logging.getLogger(n).level for n in names]
    yield
    for n, level in zip(names, saved):
        logging.getLogger(n).setLevel(level)


LIBRARIES = ["absl", "orbax", "orbax.checkpoint", "jax._src.xla_bridge", "grain", "tensorflow_datasets"]


def test_log_levels_ours_info_libraries_warning_unless_verbosity(restore_log_levels):
    setup_logging(None)
    assert logging.getLogger("headsup_jax.train.loop").getEffectiveLevel() == logging.INFO
    for name in LIBRARIES:
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name
    setup_logging(0)  # -v 0: everything at INFO
    for name in LIBRARIES + ["headsup_jax.train.loop"]:
        assert logging.getLogger(name).getEffectiveLevel() == logging.INFO, name
    setup_logging(1)  # -v 1: everything at DEBUG
    for name in LIBRARIES + ["headsup_jax.train.loop"]:
        assert logging.getLogger(name).getEffectiveLevel() == logging.DEBUG, name


def test_train_require_accelerator_refuses_cpu_before_touching_the_workdir(tmp_path):
    rc, out, err = _headsup("train", "--require_accelerator", f"--config={CONFIG}:tiny", "--workdir=run",
                            cwd=tmp_path, JAX_PLATFORMS="cpu")
    assert rc == 2 and out == ""
    assert err.splitlines() == [err.strip()] and "Traceback" not in err
    assert err.startswith("headsup: error: --require_accelerator: JAX found no accelerator (backend=cpu devices=")
    assert not (tmp_path / "run").exists()


def test_train_config_errors_are_one_line(tmp_path):
    cases = {
        ("--config=missing.py",): "headsup: error: --config: missing.py: no such file",
        (f"--config={CONFIG}:tiny", "--split=x"): "headsup: error: `headsup train` does not take --split (eval only)",
        (f"--config={CONFIG}:tiny", "--subjects=3"):
            "headsup: error: `headsup train` does not take --subjects (eval only)",
        (f"--config={CONFIG}:tiny", "--config.optim.lrr=1"):
            "headsup: error: --config: no field 'lrr' Did you mean \"lr\" instead of \"lrr\"?",
    }
    for args, message in cases.items():
        rc, out, err = _headsup("train", *args, "--workdir=run", cwd=tmp_path)
        assert (rc, err.strip().splitlines()[-1]) == (2, message), err
        assert "Traceback" not in err
        assert not (tmp_path / "run").exists()


def test_eval_takes_split_and_logs_the_backend_without_library_chatter(tmp_path):
    rc, out, err = _headsup("eval", "--workdir=run", "--split=test", "--subjects=2", cwd=tmp_path)
    lines = err.strip().splitlines()
    assert rc == 2 and lines[-1] == "headsup: error: no --config given and no run/config.json: start a run with --config"
    # nothing but the backend line: no libraries' INFO lines (with JAX_PLATFORMS unset, jax's failed libtpu probe)
    assert len(lines) == 2 and lines[0].endswith(f"] {check_backend(False)}"), err
    rc, out, err = _headsup("eval", "--workdir=run", "-v", "1", cwd=tmp_path)  # -v 1: libraries' DEBUG lines too
    assert rc == 2 and "Initializing backend" in err
