"""A sweep's report: power-law fits with bootstrap intervals, PNG plots and OUT/report.md.

Fitted quantities (both fall as models improve, both > 0): the final train loss (the objective at the last
step, one batch) and the held-out error 10^(-PSNR/10), the MSE whose PSNR is the run's mean held-out PSNR
(PSNR itself rises without bound in log space, so it is not the quantity a decreasing a X^-b + c fits).
Each axis the sweep varies (parameters, views, train identities, and compute along the parameter axis) is
fitted within each group of runs equal on the other axes, when it has >= 3 distinct values.

Compute-optimal size for a budget C (`--budget`), from the parameter fits: a run of size N at the sweep's
steps S and batch B costs C(N) = S * B * F(N), F the FLOPs per example (fitted log-log over the sweep's
sizes). The fitted L(N) falls over the whole range, so at those steps the best size the budget pays for is
the N with C(N) = C; the report gives it with its fitted held-out error and interval, and says when it lies
outside the sizes run (an extrapolation). Under a compute-matched sweep every run spent the same C0; the
best is then the size of lowest fitted error at C0, valid at that budget only. A true compute-optimal
frontier L(N, D) needs several budgets (IsoFLOP profiles); one sweep at one step count does not separate
size from data.
"""
from __future__ import annotations

import io
import math

import numpy as np
from etils import epath

from headsup_jax.fileio import write_bytes_atomic, write_text_atomic
from headsup_jax.scaling.collect import results_table
from headsup_jax.scaling.powerlaw import fit_power_law

METRICS = {"loss": ("final train loss", lambda r: r["final_train_loss"]),
           "mse": ("held-out error 10^(-PSNR/10)", lambda r: 10 ** (-r["held_out"]["psnr"] / 10))}
AXIS_LABELS = {"params": "parameters", "views": "input views N", "identities": "train identities",
               "compute": "train compute (FLOPs)"}


def _x(run: dict, axis: str) -> float:
    return {"params": run["params"], "compute": run["compute"]}.get(axis, run["axes"].get(axis))


def groups(runs: list[dict], axis: str) -> dict:
    """Runs that vary `axis` grouped by their values on the other axes: {label: [runs]}."""
    swept = "params" if axis == "compute" else axis
    out = {}
    for r in runs:
        if swept not in r["axes"]:
            continue
        others = {k: v for k, v in r["axes"].items() if k != swept}
        label = ", ".join(f"{k}={v}" for k, v in sorted(others.items())) or "all"
        out.setdefault(label, []).append(r)
    return {k: v for k, v in out.items() if len({_x(r, axis) for r in v}) >= 3}


def _value(value, run: dict):
    """A run's fitted quantity, None where the run lacks it (a loss lost to an interrupted run, no PSNR)."""
    try:
        return value(run)
    except (KeyError, TypeError):
        return None


def fits(results: dict, samples: int = 1000) -> list[dict]:
    """One fit per (axis, metric, group): {"axis", "metric", "group", "fit", "x", "y"}."""
    axes = list(results["axes"]) + (["compute"] if "params" in results["axes"] else [])
    out = []
    for axis in axes:
        for label, runs in groups(results["runs"], axis).items():
            for metric, (_, value) in METRICS.items():
                runs = [r for r in runs if _value(value, r) is not None]
                if len({_x(r, axis) for r in runs}) < 3:
                    continue
                x = np.array([_x(r, axis) for r in runs], np.float64)
                y = np.array([value(r) for r in runs], np.float64)
                out.append(dict(axis=axis, metric=metric, group=label, x=x, y=y,
                                fit=fit_power_law(x, y, samples=samples)))
    return out


def plot(fitted: list[dict], axis: str, metric: str) -> bytes:
    """PNG: the runs' points, each group's fitted law and its 95 % band, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for i, f in enumerate(x for x in fitted if x["axis"] == axis and x["metric"] == metric):
        colour = f"C{i}"
        grid = np.geomspace(f["x"].min(), f["x"].max(), 100)
        lo, hi = f["fit"].band(grid)
        ax.fill_between(grid, lo, hi, color=colour, alpha=0.2)
        ax.plot(grid, f["fit"](grid), color=colour, label=f"{f['group']}: b={f['fit'].b:.2f}")
        ax.plot(f["x"], f["y"], "o", color=colour, ms=4)
    ax.set_xscale("log")
    ax.set_xlabel(AXIS_LABELS[axis])
    ax.set_ylabel(METRICS[metric][0])
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return png.getvalue()


def _interval(fit, name: str) -> str:
    if fit.n <= 3:  # as many points as parameters: the fit is exact, resamples only repeat it
        return f"{getattr(fit, name):.4g} (3 points: exact, no interval)"
    lo, hi = fit.intervals[name]
    return f"{getattr(fit, name):.4g} [{lo:.3g}, {hi:.3g}]"


def compute_optimal(results: dict, fitted: list[dict], budget: float) -> str:
    """The method of the module docstring, on the parameter group with the most sizes (among equals the one of
    lowest mean held-out error) -> markdown lines."""
    mse = [f for f in fitted if f["axis"] == "params" and f["metric"] == "mse"]
    if not mse:
        return "No parameter sweep with >= 3 sizes: no compute-optimal size."
    best = max(mse, key=lambda f: (len(f["x"]), -float(np.mean(f["y"]))))  # most sizes, then the lowest error
    runs = groups(results["runs"], "params")[best["group"]]
    n = np.array([r["params"] for r in runs], np.float64)
    if results["budget"] == "compute":
        grid = np.geomspace(n.min(), n.max(), 200)
        star = grid[np.argmin(best["fit"](grid))]
        c0 = float(np.mean([r["compute"] for r in runs]))
        note = "" if math.isclose(budget, c0, rel_tol=0.05) else (
            f" (the sweep's budget is {c0:.3g} FLOPs, not the {budget:.3g} asked: valid at {c0:.3g} only)")
        return (f"Compute-matched sweep ({best['group']}): lowest fitted held-out error at {c0:.3g} FLOPs for "
                f"N = {star:,.0f} parameters{note}.")
    slope, intercept = np.polyfit(np.log(n), np.log([r["flops_per_example"] for r in runs]), 1)
    examples = float(np.mean([r["examples"] for r in runs]))
    star = math.exp((math.log(budget / examples) - intercept) / slope)  # C(N) = examples * F(N) = budget
    lo, hi = best["fit"].band([star])
    where = "within" if n.min() <= star <= n.max() else "outside (extrapolated)"
    return (f"Budget {budget:.3g} FLOPs at the sweep's {examples:.0f} examples per run ({best['group']}): "
            f"F(N) = {math.exp(intercept):.3g} N^{slope:.2f} FLOPs per example, so the budget pays for "
            f"N* = {star:,.0f} parameters, {where} the sizes run ({n.min():,.0f} to {n.max():,.0f}); fitted "
            f"held-out error there {float(best['fit'](star)):.4g} [{lo[0]:.3g}, {hi[0]:.3g}] "
            f"({-10 * math.log10(float(best['fit'](star))):.2f} dB).")


def write_report(results: dict, out, budget: float | None = None, samples: int = 1000) -> epath.Path:
    """OUT/report.md and OUT/fit_AXIS_METRIC.png -> the report's path."""
    out = epath.Path(out)
    fitted = fits(results, samples)
    lines = [f"# Sweep `{results['sweep']}` ({results['budget']}-matched budget)", "", results_table(results), "",
             "## Fits: L = a X^(-b) + c (least squares, 95 % bootstrap intervals over runs)", "",
             "Fitted: the final train loss, and the held-out error 10^(-PSNR/10) (the MSE of the mean held-out "
             "PSNR; PSNR = -10 log10 of it).", "",
             "| X | fitted | group | runs | a [95 %] | b [95 %] | c [95 %] |", "|---|---|---|---:|---|---|---|"]
    for f in fitted:
        lines.append(f"| {AXIS_LABELS[f['axis']]} | {METRICS[f['metric']][0]} | {f['group']} | {f['fit'].n} "
                     f"| {_interval(f['fit'], 'a')} | {_interval(f['fit'], 'b')} | {_interval(f['fit'], 'c')} |")
    if not fitted:
        lines.append("\nNo axis with >= 3 distinct values among the finished runs: nothing fitted.")
    lines.append("")
    for axis, metric in sorted({(f["axis"], f["metric"]) for f in fitted}):
        name = f"fit_{axis}_{metric}.png"
        write_bytes_atomic(out / name, plot(fitted, axis, metric))
        lines.append(f"![{metric} vs {axis}]({name})")
    if budget:
        lines += ["", "## Compute-optimal size", "", compute_optimal(results, fitted, budget), "",
                  "Method: " + __doc__.split("Compute-optimal size for a budget C (`--budget`), ")[1].strip()]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
