"""`headsup sweep plan|run|collect|report` on micro sweeps (a 2-run identities sweep trained for 3 steps a run on a
built dataset of 10 random capture folders; a 2-size capacity sweep planned only), the shared synthetic dataset's
config, the capacity sweep's sizes, compute-matched steps, job files, and data.max_train_subjects."""
import json
import re
import subprocess

import numpy as np
import pytest

from data_helpers import make_capture
from headsup_jax.cli import main
from headsup_jax.scaling.sweep import load_sweep, plan

MICRO = '''
import ml_collections

def get_config(arg=""):
    c = ml_collections.ConfigDict()
    c.name = "micro"
    c.base = "configs/headsup.py:tiny"
    capacity = arg in ("capacity", "compute")
    c.axes = {"params": [8, 16]} if capacity else {"identities": [4, 8]}
    c.budget = "compute" if arg == "compute" else "step"
    c.steps = 30 if arg == "compute" else 3
    c.reference = "d8"
    c.shared = (("template", "procedural"), ("atlas_resolution", 32), ("model.latent_size", 8),
                ("model.dim", 8), ("model.heads", 1), ("model.decoder_widths", (8, 8, 8)),
                ("data.image_size", (32, 24)), ("data.num_inputs", 2), ("data.num_targets", 2),
                ("data.batch_size", 2), ("optim.warmup_steps", 1), ("log.images_every", 0), ("log.every", 1))
    c.data = dict(source="DATA", synthetic_subjects=10, rig="frontal16")
    c.eval = dict(split="test", subjects=1, targets=2)
    if capacity:  # planned only
        c.runs = [("d8", {"model.dim": 8}), ("d16", {"model.dim": 16, "model.decoder_widths": (16, 12, 8)})]
    else:  # trained: one model, so the second run's compilations come from the persistent cache
        c.runs = [("id4", {"data.max_train_subjects": 4}), ("id8", {"data.max_train_subjects": 8})]
    if arg == "extra":
        c.runs.append(("id16", {"data.max_train_subjects": 16}))
    return c
'''


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    """The micro sweep's definition file, reading a built dataset of 10 random 6-camera capture folders (8 train,
    2 test subjects)."""
    from headsup_jax.data.tfds_builder import build_dataset

    root = tmp_path_factory.mktemp("sweep_spec")
    for s in range(10):
        make_capture(root / "captures" / f"subject{s}", n=6, width=24, height=32, seed=s)
    dataset = build_dataset(root / "captures", root / "tfds", validation=0.0, test=0.2)
    path = root / "micro.py"
    path.write_text(MICRO.replace('source="DATA"', f"source={str(dataset)!r}"))
    return path


@pytest.fixture(scope="module")
def micro(spec, tmp_path_factory):
    """The micro identities sweep run once (the expensive part: 2 trainings and evaluations of one model):
    (spec, OUT, {run: mtime})."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    assert main(["sweep", "run", "--sweep", f"{spec}", "--out", str(out)]) == 0
    return spec, out, {name: (out / name / "run.json").stat().st_mtime_ns for name in ("id4", "id8")}


def test_run_writes_each_runs_record(micro):
    spec, out, _ = micro
    records = {name: json.loads((out / name / "run.json").read_text()) for name in ("id4", "id8")}
    for name, r in records.items():
        assert (out / name / "eval_test.json").exists() and (out / name / "checkpoints").is_dir()
        assert r["steps"] == 3 and r["examples"] == 6 and r["compute"] == pytest.approx(6 * r["flops_per_example"])
        assert np.isfinite(r["final_train_loss"]) and 0 < r["held_out"]["psnr"] < 60 and r["wall_s"] > 0
        assert r["held_out_subjects"] == 1 and r["split"] == "test" and r["views"] == 2
        config = json.loads((out / name / "config.json").read_text())
        assert r["train_subjects"] == config["data"]["max_train_subjects"] == int(name[2:])
        assert r["axes"] == {"identities": int(name[2:])}
        # every run read the sweep's one dataset
        assert config["data"]["source"] == load_sweep(str(spec)).data.source
    assert records["id4"]["params"] == records["id8"]["params"] > 0


def test_second_run_skips_finished_runs(micro, monkeypatch):
    spec, out, mtimes = micro
    import headsup_jax.eval.evaluate as evaluate
    import headsup_jax.train.loop as loop

    def refuse(*a, **k):
        raise AssertionError("a finished run was trained or evaluated again")

    import headsup_jax.scaling.sweep as sweep_module

    monkeypatch.setattr(loop, "train", refuse)
    monkeypatch.setattr(evaluate, "evaluate", refuse)
    # the costs come from OUT/costs.json, not from a new lowering (the process's own cache emptied)
    monkeypatch.setattr(sweep_module, "_COSTS", {})
    monkeypatch.setattr(sweep_module, "train_step_cost", refuse)
    assert len(json.loads((out / "costs.json").read_text())["costs"]) == 1  # one model
    assert main(["sweep", "run", "--sweep", str(spec), "--out", str(out)]) == 0
    assert {n: (out / n / "run.json").stat().st_mtime_ns for n in mtimes} == mtimes


def test_a_sweep_without_a_dataset_generates_its_synthetic_subjects_once_into_out(spec, tmp_path, monkeypatch):
    """data.source "": OUT/data, from the base config with the sweep's shared overrides, rig and subject count."""
    import headsup_jax.train.data as train_data
    from headsup_jax.scaling.runner import shared_dataset

    calls = []
    monkeypatch.setattr(train_data, "dataset_dir", lambda config, out: calls.append((config, out)) or "BUILT")
    sweep = load_sweep(str(spec))
    assert shared_dataset(sweep, tmp_path) == sweep.data.source  # a named dataset is read as it is
    sweep.data.source = ""
    assert shared_dataset(sweep, tmp_path) == "BUILT"
    (config, out), = calls
    assert out == tmp_path and config.data.synthetic_subjects == 10 and config.data.rig == "frontal16"
    assert config.template == "procedural" and tuple(config.data.image_size) == (32, 24) and config.data.source == "synthetic"


def test_collect_tabulates_and_names_missing_runs(micro, capsys):
    spec, out, _ = micro
    assert main(["sweep", "collect", "--sweep", f"{spec}:extra", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^\| id4 \|", table, re.M) and re.search(r"^\| id8 \|", table, re.M)
    assert "missing: id16" in table
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["runs"]] == ["id4", "id8"] and results["missing"] == ["id16"]


def test_plan_prints_every_run_and_the_total(spec, capsys):
    assert main(["sweep", "plan", "--sweep", f"{spec}:capacity"]) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| d")}
    assert set(rows) == {"d8", "d16"} and "model.dim=16" in rows["d16"] and "**total**" in table


def test_compute_matched_steps_match_the_reference_compute(spec):
    runs = plan(load_sweep(f"{spec}:compute"))
    d8, d16 = runs
    assert d16.params > d8.params and d16.flops_per_example > d8.flops_per_example
    assert d8.steps == 30 and d16.steps < d8.steps
    assert d16.steps * d16.flops_per_example == pytest.approx(d8.steps * d8.flops_per_example, rel=0.5 / d16.steps)


def test_report_without_enough_sizes_says_nothing_was_fitted(micro):
    spec, out, _ = micro
    assert main(["sweep", "report", "--sweep", str(spec), "--out", str(out), "--bootstrap", "50"]) == 0
    report = (out / "report.md").read_text()
    assert "| id8 |" in report and "nothing fitted" in report


def test_report_fits_plots_and_states_the_compute_optimal_size(tmp_path):
    from headsup_jax.scaling.report import write_report

    params = np.array([3e4, 1e5, 3e5, 1e6, 3e6])
    mse = 2.0 * params ** -0.3 + 0.01
    flops = 5e3 * params  # per example
    runs = [dict(name=f"s{i}", params=int(n), flops_per_example=float(f), steps=100, examples=400,
                 compute=float(400 * f), axes={"params": int(n)}, views=4, train_subjects=256,
                 final_train_loss=float(m * 3), held_out={"psnr": float(-10 * np.log10(m))}, wall_s=1.0)
            for i, (n, m, f) in enumerate(zip(params, mse, flops))]
    results = {"sweep": "synthetic", "budget": "step", "axes": {"params": list(params)}, "runs": runs,
               "missing": [], "unfinished": []}
    budget = 400 * 5e3 * 5e5  # pays for N = 5e5 at 400 examples
    path = write_report(results, tmp_path, budget=budget, samples=100)
    report = path.read_text()
    row = next(line for line in report.splitlines() if line.startswith("| parameters | held-out error"))
    b = float(row.split("|")[6].split()[0])
    assert b == pytest.approx(0.3, abs=0.02)
    assert "N* = 500,000 parameters, within the sizes run" in report
    for name in ("fit_params_mse.png", "fit_params_loss.png", "fit_compute_mse.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_emitted_jobs_have_one_entry_per_run_with_its_overrides(spec, tmp_path):
    capacity = f"{spec}:capacity"
    assert main(["sweep", "run", "--sweep", capacity, "--out", "/scratch/micro", "--emit", "slurm", str(tmp_path)]) == 0
    assert main(["sweep", "run", "--sweep", capacity, "--out", "gs://b/micro", "--emit", "tpu", str(tmp_path)]) == 0
    slurm = (tmp_path / "sweep_micro.sbatch").read_text()
    assert "#SBATCH --array=0-1" in slurm
    cases = re.findall(r"^  (\d)\) NAME=(\w+); FLAGS=\((.*)\) ;;$", slurm, re.M)
    assert [(i, n) for i, n, _ in cases] == [("0", "d8"), ("1", "d16")]
    assert "--config.model.dim=16" in cases[1][2] and "--config.model.dim=8" in cases[0][2]
    assert "'--config.model.decoder_widths=(16, 12, 8)'" in cases[1][2] and "--config.optim.total_steps=3" in cases[1][2]
    assert "--config.data.num_inputs=2" in cases[0][2] and "--config=configs/headsup.py:tiny" in cases[0][2]
    assert 'srun headsup train "${FLAGS[@]}" --config.data.source="$DATA" --workdir="$OUT/$NAME"' in slurm
    assert "srun headsup eval --workdir=\"$OUT/$NAME\" --split=test --subjects=1 --targets=2" in slurm
    tpu = (tmp_path / "sweep_micro.sh").read_text()
    creates = re.findall(r"queued-resources create (\S+)", tpu)
    assert creates == ["headsup-micro-d8", "headsup-micro-d16"]
    ssh = [line for line in tpu.splitlines() if "tpu-vm ssh" in line]
    launches = [line for line in tpu.splitlines() if "launch/tpu_pod.sh" in line and line.startswith("TPU=")]
    assert len(launches) == 2 and launches[1].startswith("TPU=headsup-micro-d16 WORKDIR=\"$OUT/d16\"")
    assert "--config.model.dim=16" in launches[1] and "--config.data.source=\"$DATA\"" in launches[1]
    assert len(ssh) == 2 and "headsup eval --workdir=$OUT/d16 --split=test" in ssh[1]
    assert "OUT:=gs://b/micro" in tpu
    for script in ("sweep_micro.sbatch", "sweep_micro.sh"):  # both parse as bash
        subprocess.run(["bash", "-n", str(tmp_path / script)], check=True)


def test_capacity_sweep_spans_five_sizes_and_30x_parameters():
    sweep = load_sweep("configs/scaling.py:capacity")
    runs = plan(sweep, flops=False)
    params = [r.params for r in runs]
    assert len(set(params)) >= 5 and params == sorted(params)
    assert max(params) / min(params) >= 30
    assert [r.config.model.dim for r in runs] == [16 * k for k in (1, 2, 3, 4, 6, 8)]
    assert all(r.config.model.heads * 16 == r.config.model.dim for r in runs)


def test_bad_sweep_option_is_one_line_error(capsys):
    assert main(["sweep", "plan", "--sweep", "configs/scaling.py:capacity,budget=sometimes"]) == 2
    assert "budget must be step or compute" in capsys.readouterr().err


def test_max_train_subjects_reads_the_first_k_train_records(micro):
    from headsup_jax.errors import ConfigError
    from headsup_jax.data.tfds_builder import load_source
    from headsup_jax.train.config import size_config
    from headsup_jax.train.data import train_source

    spec, _, _ = micro
    dataset = load_sweep(str(spec)).data.source
    config = size_config("tiny")
    full = load_source(dataset, "train")
    config.data.max_train_subjects = 3
    first = train_source(config, dataset)
    assert len(first) == 3 and [first[i]["subject"] for i in range(3)] == [full[i]["subject"] for i in range(3)]
    with pytest.raises(IndexError):
        first[3]
    config.data.max_train_subjects = len(full) + 1
    with pytest.raises(ConfigError, match="max_train_subjects"):
        train_source(config, dataset)
