"""A sweep's results: each run's run.json (written by `headsup sweep run`) in one table, OUT/results.json."""
from __future__ import annotations

import json

from etils import epath

from headsup_jax.fileio import write_json_atomic


def collect(sweep, out) -> dict:
    """{"sweep", "budget", "axes", "runs": [run.json of each finished run], "missing": [names], "unfinished":
    [names: a workdir without run.json]} -> also written to OUT/results.json."""
    out = epath.Path(out)
    runs, missing, unfinished = [], [], []
    for name, _ in sweep.runs:
        done = out / name / "run.json"
        if done.exists():
            runs.append(json.loads(done.read_text()))
        else:
            (unfinished if (out / name).exists() else missing).append(name)
    results = {"sweep": sweep.name, "budget": sweep.budget, "axes": sweep.axes.to_dict(), "runs": runs,
               "missing": missing, "unfinished": unfinished}
    write_json_atomic(out / "results.json", results)
    return results


def _metric(run: dict, name: str) -> str:
    value = run["held_out"].get(name)
    return "-" if value is None else f"{value:.4f}" if name != "psnr" else f"{value:.2f}"


def _number(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def results_table(results: dict) -> str:
    """Markdown: one row per finished run, then the runs not finished."""
    lines = ["| run | params | views | train identities | steps | examples | compute (FLOPs) | final train loss "
             "| held-out PSNR (dB) | SSIM | LPIPS | wall (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["runs"]:
        lines.append(f"| {r['name']} | {r['params']:,} | {r['views']} | {r['train_subjects']} "
                     f"| {r['steps']} | {r['examples']} | {r['compute']:.3g} | {_number(r['final_train_loss'])} "
                     f"| {_metric(r, 'psnr')} | {_metric(r, 'ssim')} | {_metric(r, 'lpips')} | {r['wall_s']:.0f} |")
    for kind in ("unfinished", "missing"):
        if results[kind]:
            lines.append(f"\n{kind}: {', '.join(results[kind])}")
    return "\n".join(lines)
