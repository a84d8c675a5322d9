"""launch/: argument checks, --dry-run output (the exact command lines and environment), and local.sh really
starting N processes. The launched programs (gcloud, srun, sbatch, headsup) are fakes on PATH that record their
arguments, so a dry run that executes anything fails the test."""
from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FAKES = ("gcloud", "srun", "sbatch", "headsup")


@pytest.fixture
def fake_path(tmp_path):
    """A bin folder of fake programs; each appends `NAME ARGS...` (shell-quoted) and its gloo/XLA
    environment to calls.txt as one write (local.sh's processes run at once: separate writes interleaved)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    for name in FAKES:
        script = bin_dir / name
        script.write_text(
            "#!/usr/bin/env bash\n"
            f'line="$(printf "%q " {name} "$@")| collectives=$JAX_CPU_COLLECTIVES_IMPLEMENTATION xla=$XLA_FLAGS"\n'
            f'printf "%s\\n" "$line" >> {shlex.quote(str(calls))}\necho "fake {name} ran"\n')
        script.chmod(0o755)
    return bin_dir, calls


def run(script: str, args, fake_path, **env) -> subprocess.CompletedProcess:
    bin_dir, _ = fake_path
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU", "ZONE", "WORKDIR",
                                                                          "REPO", "HEADSUP", "PORT", "XLA_FLAGS"))}
    full_env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", **env)
    return subprocess.run(["bash", str(REPO / "launch" / script), *args], env=full_env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def assert_nothing_ran(fake_path) -> None:
    calls = fake_path[1]
    assert not calls.exists(), f"--dry-run executed: {calls.read_text()}"


def test_local_dry_run_prints_every_process_and_the_environment(fake_path, tmp_path):
    workdir = tmp_path / "run dir"
    r = run("local.sh", ["--dry-run", "2", "--config", "configs/headsup.py:tiny", "--workdir", str(workdir),
                         "--config.train.steps=3"], fake_path, PORT="23456")
    assert r.returncode == 0, r.stderr
    assert_nothing_ran(fake_path)
    assert not workdir.exists()
    lines = r.stdout.splitlines()
    assert "export JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo" in lines
    assert "export JAX_PLATFORMS=cpu" in lines
    assert "export XLA_FLAGS=--xla_force_host_platform_device_count=1" in lines
    commands = [line for line in lines if line.startswith("headsup train")]
    assert len(commands) == 2
    for i, line in enumerate(commands):
        words = shlex.split(line)
        assert words[:-3] == ["headsup", "train", "--config", "configs/headsup.py:tiny", "--workdir", str(workdir),
                              "--config.train.steps=3", "--coordinator=127.0.0.1:23456", "--num_processes=2",
                              f"--process_id={i}"]
        assert words[-3:] == [f">{workdir}/process_{i}.log", "2>&1", "&"]


def test_local_runs_n_processes_with_their_flags(fake_path, tmp_path):
    workdir = tmp_path / "run"
    r = run("local.sh", ["3", "--config=configs/headsup.py:tiny", f"--workdir={workdir}"], fake_path,
            PORT="23457", LOCAL_DEVICES="2")
    assert r.returncode == 0, r.stderr
    assert "fake headsup ran" in r.stdout  # the tail of process 0's log
    calls = sorted(fake_path[1].read_text().splitlines())
    assert len(calls) == 3
    for i, call in enumerate(calls):
        assert call == (f"headsup train --config=configs/headsup.py:tiny --workdir={workdir} "
                        f"--coordinator=127.0.0.1:23457 --num_processes=3 --process_id={i} "
                        "| collectives=gloo xla=--xla_force_host_platform_device_count=2")
        assert (workdir / f"process_{i}.log").read_text() == "fake headsup ran\n"


@pytest.mark.parametrize("args, message", [
    (["0", "--config", "c", "--workdir", "w"], "NUM_PROCESSES must be a positive integer, got '0'"),
    (["two", "--config", "c", "--workdir", "w"], "NUM_PROCESSES must be a positive integer, got 'two'"),
    (["2", "--workdir", "w"], "--config is required"),
    (["2", "--config", "c"], "--workdir is required"),
])
def test_local_rejects_bad_arguments(fake_path, args, message):
    r = run("local.sh", ["--dry-run", *args], fake_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert_nothing_ran(fake_path)


def test_slurm_dry_run_prints_sbatch_and_srun(fake_path):
    r = run("slurm.sbatch", ["--dry-run", "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu",
                             "--config", "configs/headsup.py:l", "--workdir", "/shared/runs/l",
                             "--config.optim.lr=1e-4"], fake_path)
    assert r.returncode == 0, r.stderr
    assert_nothing_ran(fake_path)
    lines = r.stdout.splitlines()
    headsup = f"{REPO}/.venv/bin/headsup"
    train = ["--config=configs/headsup.py:l", "--workdir=/shared/runs/l", "--config.optim.lr=1e-4"]
    sbatch = [shlex.split(line) for line in lines if line.startswith("sbatch ")]
    assert sbatch == [["sbatch", "--nodes=4", "--ntasks-per-node=8", "--gpus-per-task=1", "--time=24:00:00",
                       "--partition=gpu", f"--chdir={REPO}", f"--export=ALL,REPO={REPO},HEADSUP={headsup}",
                       f"{REPO}/launch/slurm.sbatch", *train]]
    srun = [shlex.split(line) for line in lines if line.startswith("srun ")]
    assert srun == [["srun", "--kill-on-bad-exit=1", headsup, "train", "--require_accelerator", *train]]
    assert f"export REPO={REPO}" in lines and "export PYTHONUNBUFFERED=1" in lines


def test_slurm_inside_the_job_runs_srun(fake_path, tmp_path):
    """What sbatch's copy of the script does on the allocation (SLURM_JOB_ID set): srun with the train flags."""
    args = ["--config", "configs/headsup.py:l", "--workdir", "/shared/runs/l"]
    env = dict(SLURM_JOB_ID="42", SLURM_SUBMIT_DIR=str(REPO), REPO=str(REPO), HEADSUP="/opt/headsup")
    dry = run("slurm.sbatch", ["--dry-run", *args], fake_path, **env)
    assert dry.returncode == 0, dry.stderr
    assert_nothing_ran(fake_path)
    want = "srun --kill-on-bad-exit=1 /opt/headsup train --require_accelerator --config=configs/headsup.py:l " \
           "--workdir=/shared/runs/l"
    assert want in dry.stdout.splitlines() and not any(line.startswith("sbatch") for line in dry.stdout.splitlines())
    real = run("slurm.sbatch", args, fake_path, **dict(env, HEADSUP="/bin/true"))
    assert real.returncode == 0, real.stderr
    assert fake_path[1].read_text().split(" | ")[0].strip() == want.replace("/opt/headsup", "/bin/true")


@pytest.mark.parametrize("args, message", [
    (["--nodes", "-1", "--config", "c", "--workdir", "/w"], "--nodes must be a positive integer, got '-1'"),
    (["--gpus-per-node", "0", "--config", "c", "--workdir", "/w"], "--gpus-per-node must be a positive integer"),
    (["--workdir", "/w"], "--config is required"),
    (["--config", "c"], "--workdir is required"),
    (["--config", "c", "--workdir", "runs/l"], "--workdir must be an absolute path on a shared filesystem"),
    (["--config", "c", "--workdir", "/w", "--time", "soon"], "--time must be a SLURM time"),
])
def test_slurm_rejects_bad_arguments(fake_path, args, message):
    r = run("slurm.sbatch", ["--dry-run", *args], fake_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert_nothing_ran(fake_path)


TPU_ENV = dict(TPU="my-v5p-64", ZONE="us-east5-a", WORKDIR="gs://bucket/runs/xl")


def test_tpu_dry_run_installs_from_this_checkout_then_trains(fake_path):
    r = run("tpu_pod.sh", ["--dry-run", "--config", "configs/headsup.py:xl", "--config.train.steps=100"],
            fake_path, **TPU_ENV)
    assert r.returncode == 0, r.stderr
    assert_nothing_ran(fake_path)
    ref = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    lines = r.stdout.splitlines()
    assert [f"export {k}={v}" for k, v in TPU_ENV.items()] == lines[1:4] and lines[4] == f"export REF={ref}"
    steps = [shlex.split(line) for line in lines[5:]]
    archive = f"/tmp/headsup-jax-{ref}.tar.gz"
    where = ["--zone=us-east5-a", "--worker=all"]
    assert steps[0] == ["git", "-C", str(REPO), "archive", "--format=tar.gz", "-o", archive, "HEAD"]
    assert steps[1] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"my-v5p-64:{archive}", *where]
    assert steps[2][:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v5p-64", *where][:7]
    install = steps[2][-1]
    assert install.startswith("--command=") and f"tar -xzf {archive} -C ~/headsup-jax-{ref}" in install
    assert re.search(r"-m venv \.venv && .*\.venv/bin/pip install -q -c constraints\.txt -e \"\.\[tpu\]\"$", install)
    assert steps[3][:-1] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v5p-64", *where]
    assert steps[3][-1] == (f"--command=cd ~/headsup-jax-{ref} && PYTHONUNBUFFERED=1 .venv/bin/headsup train "
                            "--require_accelerator --workdir=gs://bucket/runs/xl --config configs/headsup.py:xl "
                            "--config.train.steps=100 2>&1 | tee -a /tmp/headsup_train.log")
    assert len(steps) == 4


def test_tpu_dry_run_clones_a_ref(fake_path):
    r = run("tpu_pod.sh", ["--dry-run", "--config=configs/headsup.py:xl"], fake_path,
            **TPU_ENV, REPO_URL="https://github.com/example/headsup-jax.git", REF="v0.1", PROJECT="proj")
    assert r.returncode == 0, r.stderr
    assert_nothing_ran(fake_path)
    steps = [shlex.split(line) for line in r.stdout.splitlines() if line.startswith("gcloud ")]
    assert len(steps) == 2 and all("--project=proj" in s for s in steps)
    assert ("git clone --depth 1 --branch v0.1 https://github.com/example/headsup-jax.git ~/headsup-jax-v0.1"
            in steps[0][-1])
    skip = run("tpu_pod.sh", ["--dry-run", "--skip-install", "--config=configs/headsup.py:xl"], fake_path,
               **TPU_ENV, REPO_URL="https://github.com/example/headsup-jax.git", REF="v0.1")
    assert [line for line in skip.stdout.splitlines() if "tpu-vm" in line] == [
        line.replace(" --project=proj", "") for line in r.stdout.splitlines() if "headsup train" in line]


@pytest.mark.parametrize("env, args, message", [
    (dict(TPU_ENV, TPU=""), ["--config", "c"], "set TPU"),
    (dict(TPU_ENV, ZONE=""), ["--config", "c"], "set ZONE"),
    (dict(TPU_ENV, WORKDIR=""), ["--config", "c"], "set WORKDIR"),
    (dict(TPU_ENV, WORKDIR="/local/runs"), ["--config", "c"], "WORKDIR must be a bucket path gs://"),
    (TPU_ENV, [], "--config is required"),
    (TPU_ENV, ["--config", "c", "--workdir", "gs://b/x"], "give the workdir as WORKDIR=gs://..., not --workdir"),
])
def test_tpu_rejects_bad_arguments(fake_path, env, args, message):
    r = run("tpu_pod.sh", ["--dry-run", *args], fake_path, **env)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1].startswith("launch/tpu_pod.sh: ")
    assert_nothing_ran(fake_path)
