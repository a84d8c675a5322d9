"""`headsup sweep plan|run|collect|report` on a 2-run micro sweep (3 steps each, 10 synthetic subjects), the
capacity sweep's sizes, compute-matched steps, job files, and data.max_train_subjects."""
import json
import re
import subprocess

import numpy as np
import pytest

from headsup_jax.cli import main
from headsup_jax.scaling.sweep import load_sweep, plan

MICRO = '''
import ml_collections

def get_config(arg=""):
    c = ml_collections.ConfigDict()
    c.name = "micro"
    c.base = "configs/headsup.py:tiny"
    c.axes = {"params": [8, 16]}
    c.budget = "compute" if arg == "compute" else "step"
    c.steps = 30 if arg == "compute" else 3
    c.reference = "d8"
    c.shared = (("template", "procedural"), ("atlas_resolution", 32), ("model.latent_size", 8),
                ("data.image_size", (32, 24)), ("data.num_inputs", 2), ("data.num_targets", 2),
                ("data.batch_size", 2), ("data.synthetic_workers", 1), ("optim.warmup_steps", 1),
                ("log.images_every", 0), ("log.every", 1))
    c.data = dict(source="", synthetic_subjects=10, rig="frontal16")
    c.eval = dict(split="test", subjects=1, targets=2)
    c.runs = [("d8", {"model.dim": 8, "model.heads": 1, "model.decoder_widths": (8, 8, 8)}),
              ("d16", {"model.dim": 16, "model.heads": 1, "model.decoder_widths": (16, 12, 8)})]
    if arg == "extra":
        c.runs.append(("d32", {"model.dim": 32, "model.heads": 2}))
    return c
'''


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    """The micro sweep's definition file."""
    path = tmp_path_factory.mktemp("sweep_spec") / "micro.py"
    path.write_text(MICRO)
    return path


@pytest.fixture(scope="module")
def micro(spec, tmp_path_factory):
    """The micro sweep run once (the expensive part: 2 trainings and evaluations): (spec, OUT, {run: mtime})."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    assert main(["sweep", "run", "--sweep", f"{spec}", "--out", str(out)]) == 0
    return spec, out, {name: (out / name / "run.json").stat().st_mtime_ns for name in ("d8", "d16")}


def test_run_writes_each_runs_record(micro):
    spec, out, _ = micro
    records = {name: json.loads((out / name / "run.json").read_text()) for name in ("d8", "d16")}
    for name, r in records.items():
        assert (out / name / "eval_test.json").exists() and (out / name / "checkpoints").is_dir()
        assert r["steps"] == 3 and r["examples"] == 6 and r["compute"] == pytest.approx(6 * r["flops_per_example"])
        assert np.isfinite(r["final_train_loss"]) and 0 < r["held_out"]["psnr"] < 60 and r["wall_s"] > 0
        assert r["held_out_subjects"] == 1 and r["split"] == "test" and r["views"] == 2
        assert json.loads((out / name / "config.json").read_text())["model"]["dim"] == int(name[1:])
        # every run read the one shared dataset
        assert json.loads((out / name / "config.json").read_text())["data"]["source"] == (out / "data" / "BUILT").read_text()
    assert records["d16"]["params"] > records["d8"]["params"] and records["d16"]["flops_per_example"] > records["d8"]["flops_per_example"]


def test_second_run_skips_finished_runs(micro, monkeypatch):
    spec, out, mtimes = micro
    import headsup_jax.eval.evaluate as evaluate
    import headsup_jax.train.loop as loop

    def refuse(*a, **k):
        raise AssertionError("a finished run was trained or evaluated again")

    monkeypatch.setattr(loop, "train", refuse)
    monkeypatch.setattr(evaluate, "evaluate", refuse)
    assert main(["sweep", "run", "--sweep", str(spec), "--out", str(out)]) == 0
    assert {n: (out / n / "run.json").stat().st_mtime_ns for n in mtimes} == mtimes


def test_collect_tabulates_and_names_missing_runs(micro, capsys):
    spec, out, _ = micro
    assert main(["sweep", "collect", "--sweep", f"{spec}:extra", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^\| d8 \|", table, re.M) and re.search(r"^\| d16 \|", table, re.M)
    assert "missing: d32" in table
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["runs"]] == ["d8", "d16"] and results["missing"] == ["d32"]


def test_plan_prints_every_run_and_the_total(spec, capsys):
    assert main(["sweep", "plan", "--sweep", str(spec)]) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| d")}
    assert set(rows) == {"d8", "d16"} and "model.dim=16" in rows["d16"] and "**total**" in table


def test_compute_matched_steps_match_the_reference_compute(spec):
    runs = plan(load_sweep(f"{spec}:compute"))
    d8, d16 = runs
    assert d8.steps == 30 and d16.steps < d8.steps
    assert d16.steps * d16.flops_per_example == pytest.approx(d8.steps * d8.flops_per_example, rel=0.5 / d16.steps)


def test_report_without_enough_sizes_says_nothing_was_fitted(micro):
    spec, out, _ = micro
    assert main(["sweep", "report", "--sweep", str(spec), "--out", str(out), "--bootstrap", "50"]) == 0
    report = (out / "report.md").read_text()
    assert "| d16 |" in report and "nothing fitted" in report


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
    assert main(["sweep", "run", "--sweep", str(spec), "--out", "/scratch/micro", "--emit", "slurm", str(tmp_path)]) == 0
    assert main(["sweep", "run", "--sweep", str(spec), "--out", "gs://b/micro", "--emit", "tpu", str(tmp_path)]) == 0
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

    _, out, _ = micro
    dataset = (out / "data" / "BUILT").read_text()
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
