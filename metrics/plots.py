"""PNG plots of a run's scores (matplotlib, Agg): FID and IS against training time, per-class FID bars."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from core.fmt import isnan  # noqa: E402
from core.rundir import RunDir, atomic_write  # noqa: E402
from metrics.results import read_results, read_table, rows, value  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """tight_layout, save atomically as PNG, close: every plot is written the same way."""
    fig.tight_layout()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def space_label(feature_space: str, classifier_accuracy: Optional[float] = None) -> str:
    """How a score's feature space is named everywhere: never 'Inception' for the classifier."""
    if feature_space == "inception":
        return "Inception"
    acc = "" if classifier_accuracy is None or isnan(classifier_accuracy) else f", classifier acc {classifier_accuracy:.3f}"
    return f"classifier space{acc}"


def plot_scores_over_time(results: pd.DataFrame, path: str | Path) -> Optional[Path]:
    """FID (left) and IS mean +- std (right) of the ensemble against training time, with the real floor."""
    over = results[results["eval"].isin(["checkpoint", "final"]) & (results["label"].astype(str) == "all")]
    if over.empty:
        return None
    fid = over[over["metric"] == "fid"].sort_values("eval_time_s")
    ism = over[over["metric"] == "is_mean"].sort_values("eval_time_s")
    isd = over[over["metric"] == "is_std"].sort_values("eval_time_s")
    first = fid.iloc[0] if not fid.empty else over.iloc[0]
    space = space_label(first["feature_space"], first["classifier_accuracy"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if not fid.empty:
        ax.plot(fid["eval_time_s"], fid["value"], "o-", color="C0", label="ensemble")
        n = fid.iloc[-1]
        ax.set_title(f"FID ({space})\n{int(n['n_fake'])} generated vs {int(n['n_real'])} real (train split)",
                     fontsize=9)
    floor = value(results, "real_floor", "fid")
    if floor is not None:
        ax.axhline(floor["value"], color="gray", ls="--",
                   label=f"real floor {floor['value']:.3g} (train {int(floor['n_real'])} vs held-out {int(floor['n_fake'])})")
    ax.set_xlabel("training time per label (s)")
    ax.set_ylabel("FID (lower is better)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    if not ism.empty:
        std = isd.set_index("eval_time_s")["value"].reindex(ism["eval_time_s"]).fillna(0).values
        ax.errorbar(ism["eval_time_s"], ism["value"], yerr=std, fmt="o-", color="C1", capsize=3, label="ensemble")
        ax.set_title(f"IS ({space})\nmean +- std over splits, {int(ism.iloc[-1]['n_fake'])} samples",
                     fontsize=9)
    real_is = value(results, "real_floor", "is_mean")
    if real_is is not None:
        ax.axhline(real_is["value"], color="gray", ls="--", label=f"held-out real images {real_is['value']:.3g}")
    ax.set_xlabel("training time per label (s)")
    ax.set_ylabel("IS (higher is better)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_per_class(per_label: pd.DataFrame, path: str | Path, max_labels: int = 100) -> Optional[Path]:
    """Per-class FID bars (with each label's real floor) and class accuracy bars."""
    if per_label.empty:
        return None
    df = per_label.sort_values("label").head(max_labels)
    row = df.iloc[0]
    space = space_label(row["feature_space"], row.get("classifier_accuracy"))
    x = list(range(len(df)))
    names = [str(v) for v in df["label_name"]] if "label_name" in df else [str(v) for v in df["label"]]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.5 * len(df) + 2), 7), sharex=True)
    ax = axes[0]
    ax.bar(x, df["fid"], color="C0", label="generator k vs real label k")
    top = df["fid"].max()
    if top == top and top > 0:
        ax.set_ylim(0, top * 1.3)
    if "fid_floor" in df and df["fid_floor"].notna().any():
        ax.scatter(x, df["fid_floor"], color="black", marker="_", s=200, zorder=3,
                   label="real floor (train vs held-out of label k)")
    ax.set_ylabel("per-class FID")
    n_fake, n_real = int(df["n_fake"].median()), int(df["n_real"].median())
    n_held = int(df["n_heldout"].median()) if "n_heldout" in df else 0
    ax.set_title(f"Per-class FID ({space})\nn per class: ~{n_fake} generated vs ~{n_real} real"
                 + (f", floor: ~{n_held} held-out vs train" if n_held else "") + " (small n: biased upwards)",
                 fontsize=9)
    ax.legend(fontsize=8, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    ax = axes[1]
    if "class_accuracy" in df and df["class_accuracy"].notna().any():
        ax.bar(x, df["class_accuracy"], color="C2", label="samples of generator k classified as k")
        if "heldout_class_accuracy" in df:
            ax.scatter(x, df["heldout_class_accuracy"], color="black", marker="_", s=200, zorder=3,
                       label="classifier on held-out real images of k")
        acc = row.get("classifier_accuracy")
        ax.set_title("Class accuracy of samples" + ("" if isnan(acc) else f" (classifier held-out accuracy {acc:.3f})"),
                     fontsize=9)
        ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
        ax.set_ylim(0, 1.3)
    ax.set_ylabel("class accuracy")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90 if len(df) > 12 else 0, fontsize=8)
    ax.set_xlabel("label")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def _fid_panel(ax, title: str, results: Mapping[str, Optional[pd.DataFrame]]) -> bool:
    """One line per method (the same colour for a method in every panel) and the real floor; False when
    nothing was scored."""
    drawn, floor_drawn, space = False, False, ""
    for i, (method, res) in enumerate(results.items()):
        if res is None or res.empty:
            continue
        sel = pd.concat([rows(res, "checkpoint", "fid"), rows(res, "final", "fid")]).sort_values("eval_time_s")
        if sel.empty:
            continue
        ax.plot(sel["eval_time_s"], sel["value"], "o-", color=f"C{i}",
                label=f"{method} ({int(sel['n_fake'].iloc[-1])} generated)")
        space = f"FID ({space_label(sel['feature_space'].iloc[-1], sel['classifier_accuracy'].iloc[-1])})"
        floor = value(res, "real_floor", "fid")
        if floor is not None and not floor_drawn:
            ax.axhline(float(floor["value"]), color="gray", ls="--",
                       label=f"real floor {float(floor['value']):.3g} (train vs held-out)")
            floor_drawn = True
        drawn = True
    ax.set_title(f"{title}\n{space or 'not scored'}", fontsize=9)
    ax.set_xlabel("training wall-clock time (s)")
    ax.set_ylabel("FID (lower is better)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    return drawn


def plot_fid_vs_time(panels: Mapping[str, Mapping[str, Optional[pd.DataFrame]]], path: Path) -> Optional[Path]:
    """`wcgan compare`'s figure: FID against training time, one panel per regime (titled by its key),
    one line per method, each panel with its real floor (the regimes' label sets differ)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    drawn = [_fid_panel(ax, title, results) for ax, (title, results) in zip(axes[0], panels.items())]
    if not any(drawn):
        plt.close(fig)
        return None
    fig.suptitle("same budget, same devices, same feature space within each panel", fontsize=9)
    return save_figure(fig, path)


def plot_efficiency(rows: list[dict], path: Path, title: str) -> Optional[Path]:
    """Scaling efficiency against the number of workers, one point per finished sweep point."""
    ok = sorted((r for r in rows if r.get("efficiency") is not None), key=lambda r: r["n_workers"])
    if not ok:
        return None
    ns = [r["n_workers"] for r in ok]
    eff = [r["efficiency"] for r in ok]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="ideal")
    ax.plot(ns, eff, marker="o", label="measured (images/s)")
    for n, e in zip(ns, eff):
        ax.annotate(f"{e:.2f}", (n, e), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    if ns[-1] / ns[0] >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel("workers N")
    ax.set_ylabel(f"efficiency vs N={ok[0]['baseline_n']}")
    ax.set_ylim(0, max(1.1, max(eff) * 1.15))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)


def make_plots(run_dir: str | Path) -> dict[str, Path]:
    """All plots of a run from its results.csv / per_label.csv, under run_dir/plots/."""
    out: dict[str, Path] = {}
    run = RunDir(run_dir)
    results, per_label = read_results(run.results_csv), read_table(run.per_label_csv)
    if results is not None:
        p = plot_scores_over_time(results, run.plots / "fid_over_time.png")
        if p:
            out["fid_over_time"] = p
    if per_label is not None:
        p = plot_per_class(per_label, run.plots / "per_class_fid.png")
        if p:
            out["per_class_fid"] = p
    return out
