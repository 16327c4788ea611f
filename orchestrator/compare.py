"""`wcgan compare`: the per-label ensemble against one data-parallel conditional GAN, same budget, same devices.

    wcgan compare --config experiments/digits.yaml --set train.budget_s=60

Writes ``<run.storage>/<run.name>-compare-<timestamp>/`` (or ``<run.storage>/<run.id>/`` when
``run.id`` is set, which also resumes an interrupted comparison)::

    ensemble/         a normal per-label run (labels/<k>/ckpt-*.pt, results.csv, report.md, ...)
    baseline/         the conditional WGAN-GP run (baseline/ckpt-*.pt, results.csv, report.md, ...)
    _classifiers/     the classifier feature space both are scored in (digits / small images)
    comparison.csv    one row per method
    fid_vs_time.png   FID against training wall-clock time, both methods
    report.md

Fairness rules, applied here and stated in the report:

* Same data, labels, resolution, ``model.width`` / ``z_dim`` (each label's network in the
  ensemble has the architecture of the conditional network, which adds the label embeddings),
  the same ``train`` hyper-parameters (lr, betas, n_critic, gp_weight, batch size per worker
  and per label) and the same ``train.budget_s`` of training wall-clock time.
* Same devices: the baseline's Ray Train workers together hold exactly the CPUs and GPUs the
  ensemble's label actors held. With GPUs, one worker per GPU the ensemble occupied
  (``ceil(gpus_per_label x labels)``, each worker the equal share of that total, so one worker
  per physical GPU and NCCL); without GPUs, one worker per whole CPU of the ensemble's total
  (``floor(cpus_per_label x labels)``, gloo), each worker the equal share of the CPUs.
* Same scoring: one feature extractor (the same cached classifier, or Inception), the same
  number of samples per label drawn with the same noise, the same evaluation times
  (``metrics.every_s``), via ``metrics.evaluate.evaluate_run`` on each run directory.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from core import fmt
from core.config import Config, dump_config
from core.rundir import RunDir, write_csv, write_text
from metrics.evaluate import evaluate_run
from metrics.plots import plot_fid_vs_time
from metrics.results import read_results, rows, value
from orchestrator.args import config_from_args
from orchestrator.baseline import train_baseline
from orchestrator.cluster import alive_nodes, connect
from orchestrator.preflight import check_storage
from orchestrator.resources import BaselinePlan, ResourcePlan, plan_baseline, plan_resources
from orchestrator.run import train
from workers.data import describe
from workers.models import build_models, count_parameters

logger = logging.getLogger(__name__)

COMPARISON_COLUMNS = ["method", "fid", "is_mean", "is_std", "kid_mean", "mean_class_fid", "class_accuracy",
                      "images_per_s", "device_seconds", "budget_s", "n_fake", "feature_space"]
EXTRA_COLUMNS = ["device", "workers", "steps", "train_s", "generator_params", "critic_params",
                 "classifier_accuracy", "real_floor_fid"]
METHODS = ("ensemble", "baseline")


# ------------------------------------------------------------------ scores

def score_row(results: Optional[pd.DataFrame]) -> dict:
    """FID, IS, KID, mean per-class FID, class accuracy of the final evaluation in a tidy results table."""
    nan = float("nan")
    row = {"fid": nan, "is_mean": nan, "is_std": nan, "kid_mean": nan, "mean_class_fid": nan,
           "class_accuracy": nan, "n_fake": nan, "feature_space": None, "classifier_accuracy": nan,
           "real_floor_fid": nan}
    if results is None or results.empty:
        return row
    for metric in ("fid", "is_mean", "is_std", "kid_mean", "class_accuracy"):
        r = value(results, "final", metric)
        if r is not None:
            row[metric] = float(r["value"])
    fid = value(results, "final", "fid")
    if fid is not None:
        row["n_fake"] = int(fid["n_fake"])
        row["feature_space"] = fid["feature_space"]
        row["classifier_accuracy"] = float(fid.get("classifier_accuracy", nan))
    per = rows(results, "final", "fid", label=None)
    if not per.empty:
        row["mean_class_fid"] = float(per["value"].mean())
    floor = value(results, "real_floor", "fid")
    if floor is not None:
        row["real_floor_fid"] = float(floor["value"])
    return row


def _param_counts(cfg: Config, info) -> dict:
    g, d = build_models(cfg.model, info.channels, info.image_size)
    cg, cd = build_models(cfg.model, info.channels, info.image_size, info.num_classes)
    n = len(info.labels)
    return {"ensemble": (n * count_parameters(g), n * count_parameters(d)),
            "baseline": (count_parameters(cg), count_parameters(cd))}


# ------------------------------------------------------------------ outputs

def write_report(cmp_dir: Path, table: pd.DataFrame, cfg: Config, info, ens_plan: ResourcePlan,
                 bl_plan: BaselinePlan, plot: Optional[Path], scored: bool) -> Path:
    by = table.set_index("method")
    space = next((s for s in table["feature_space"] if isinstance(s, str)), None)
    acc = table["classifier_accuracy"].dropna()
    space_note = ""
    if space == "classifier":
        space_note = (f"Scores are in **classifier space, not Inception space** (a small CNN trained on "
                      f"{info.name}'s training split, held-out accuracy {fmt.num(acc.iloc[0] if len(acc) else None)}); "
                      f"they compare the two methods with each other, not with published figures.")
    elif space == "inception":
        space_note = "Scores use torch-fidelity's InceptionV3 (TF1-compatible resize, antialias off)."
    winner = ""
    if scored and not by["fid"].isna().any():
        best = by["fid"].idxmin()
        other = "baseline" if best == "ensemble" else "ensemble"
        winner = (f"Lower FID: **{best}** ({fmt.num(by.loc[best, 'fid'], '.2f')} vs {fmt.num(by.loc[other, 'fid'], '.2f')}, "
                  f"{fmt.count(by.loc[best, 'n_fake'])} generated images each).")
    headers = ["method", "FID ↓", "IS ↑", "KID ↓", "mean per-class FID ↓", "class accuracy ↑", "images/s",
               "device-seconds", "workers", "steps", "generator params", "n generated"]
    table_rows = []
    for m in METHODS:
        r = by.loc[m]
        table_rows.append([m, fmt.num(r["fid"], ".2f"), f"{fmt.num(r['is_mean'], '.2f')} ± {fmt.num(r['is_std'], '.2f')}",
                     fmt.num(r["kid_mean"], ".4f"), fmt.num(r["mean_class_fid"], ".2f"), fmt.num(r["class_accuracy"]),
                     fmt.num(r["images_per_s"], ".0f"), fmt.num(r["device_seconds"], ".0f"), str(r["workers"]),
                     fmt.count(r["steps"]), f"{int(r['generator_params']):,}", fmt.count(r["n_fake"])])
    table_md = [fmt.markdown_table(headers, table_rows)]
    kind = "GPU" if bl_plan.use_gpu else "CPU"
    lines = [
        f"# wcgan comparison `{cmp_dir.name}`", "",
        f"Per-label parallel training (one unconditional WGAN-GP per label, {info.name}, {len(info.labels)} labels, "
        f"{info.image_size} px) against one conditional WGAN-GP (conditional batch norm generator, projection "
        f"critic) trained data-parallel with Ray Train, under the same budget of **{cfg.train.budget_s:g} s** "
        f"of training wall-clock time on the same devices.", "",
    ]
    if space_note:
        lines += ["> " + space_note, ""]
    if winner:
        lines += [winner, ""]
    if not scored:
        lines += ["Not scored (metrics.enabled=false): run `wcgan evaluate --run` on each run directory, "
                  "then `wcgan compare` again with the same run.id to rebuild this table.", ""]
    lines += table_md + [""]
    lines += ["FID, IS and KID are over all labels at the end of training; mean per-class FID averages the "
              "FID of each label's samples against that label's real images (biased upwards at few samples per "
              "class: compare at equal counts only). images/s counts real images the critics saw per second, over "
              f"all workers; device-seconds are {kind}-seconds held for training (resources x training time). "
              "Steps are generator updates: summed over the label generators for the ensemble, of the one shared "
              "generator (each on a global batch of batch size x workers) for the baseline.", ""]
    if plot is not None:
        lines += ["## FID against training time", "", f"![FID against wall-clock time]({plot.name})", ""]
    lines += [
        "## Set-up", "",
        f"- ensemble: {ens_plan.describe()}; batch {cfg.train.batch_size} per label",
        f"- baseline: {bl_plan.describe()}; batch {cfg.train.batch_size} per worker "
        f"(global {cfg.train.batch_size * bl_plan.num_workers}); gradients averaged over workers every update "
        f"(DDP arithmetic; an explicit all-reduce because DDP does not support the gradient penalty's double backward)",
        f"- both: model.width={cfg.model.width}, z_dim={cfg.model.z_dim}, lr={cfg.train.lr:g}, "
        f"betas={tuple(cfg.train.betas)}, n_critic={cfg.train.n_critic}, gp_weight={cfg.train.gp_weight:g}, "
        f"seed={cfg.train.seed}; {cfg.metrics.samples_per_label} samples per label scored with the same noise",
        f"- resources held in total: ensemble {fmt.resources(ens_plan.total_gpus, ens_plan.total_cpus)}, "
        f"baseline {fmt.resources(bl_plan.num_workers * bl_plan.resources_per_worker.get('GPU', 0), bl_plan.num_workers * bl_plan.resources_per_worker.get('CPU', 0))}",
        "", "## Files", "",
        "- `comparison.csv`: the table above, one row per method (plus device, workers, steps, parameters)",
        "- `fid_vs_time.png`: FID of both methods at every evaluation time",
        "- [`ensemble/report.md`](ensemble/report.md), [`baseline/report.md`](baseline/report.md): each run's own "
        "report, results.csv, per_label.csv and sample grid",
        "- `wcgan sample --run <this dir>/ensemble ...` and `--run <this dir>/baseline ...` sample either model", "",
    ]
    return write_text(cmp_dir / "report.md", "\n".join(lines))


# ------------------------------------------------------------------ the comparison

@dataclass
class CompareResult:
    compare_dir: Path
    table: pd.DataFrame
    report: Path
    plot: Optional[Path]
    wall_s: float


def _method_config(cfg: Config, cmp_dir: Path, method: str, metrics_enabled: bool) -> Config:
    data = cfg.to_dict()
    data["run"]["storage"] = str(cmp_dir)
    data["run"]["id"] = method
    data["metrics"]["enabled"] = metrics_enabled
    return Config.model_validate(data)


def compare(cfg: Config, address: Optional[str] = None, evaluate: Optional[bool] = None) -> CompareResult:
    """Train both methods under the same budget and resources, score both the same way, write the comparison."""
    t0 = time.monotonic()
    info = describe(cfg.dataset)
    check_storage(cfg.run.storage)
    connect(address)
    # Plan both before any training, so a cluster that cannot hold them fails before anything is written.
    ens_plan = plan_resources(len(info.labels), alive_nodes(), cfg.resources)
    bl_plan = plan_baseline(ens_plan)
    cmp_id = cfg.run.id or f"{cfg.run.name}-compare-{time.strftime('%Y%m%d-%H%M%S')}"
    cmp_dir = (Path(cfg.run.storage) / cmp_id).resolve()
    do_eval = cfg.metrics.enabled if evaluate is None else evaluate
    logger.info("comparison %s: %s, %d labels, budget %gs each\n  ensemble: %s\n  baseline: %s", cmp_dir,
                info.name, len(info.labels), cfg.train.budget_s, ens_plan.describe(), bl_plan.describe())
    cmp_dir.mkdir(parents=True, exist_ok=True)
    write_text(cmp_dir / "config.yaml", dump_config(cfg))

    # 1. the per-label ensemble: a normal run, unscored here so both are scored the same way below
    ens_cfg = _method_config(cfg, cmp_dir, "ensemble", False)
    ens_dir = cmp_dir / "ensemble"
    ens = train(ens_cfg, address=address, evaluate=False)
    ens_plan = ens.plan
    bl_plan = plan_baseline(ens_plan)
    write_text(RunDir(ens_dir).config, dump_config(_method_config(cfg, cmp_dir, "ensemble", cfg.metrics.enabled)))
    ens_summary = pd.read_csv(ens_dir / "summary.csv") if (ens_dir / "summary.csv").is_file() \
        else pd.DataFrame(ens.summaries)

    # 2. the data-parallel conditional baseline on the same CPUs / GPUs
    bl_cfg = _method_config(cfg, cmp_dir, "baseline", cfg.metrics.enabled)
    bl_dir = cmp_dir / "baseline"
    bl_summary = train_baseline(bl_cfg, bl_dir, bl_plan.num_workers, bl_plan.use_gpu,
                                bl_plan.resources_per_worker)

    # 3. the same scoring for both
    results: dict[str, Optional[pd.DataFrame]] = {"ensemble": None, "baseline": None}
    if do_eval:
        for method, run_dir, mcfg in (("ensemble", ens_dir, _method_config(cfg, cmp_dir, "ensemble", True)),
                                      ("baseline", bl_dir, bl_cfg)):
            logger.info("scoring the %s (%s)", method, run_dir)
            # storage=cmp_dir: one classifier cache (cmp_dir/_classifiers) scores both methods.
            results[method] = evaluate_run(run_dir, cfg=mcfg, storage=cmp_dir)
    else:
        results = {m: read_results(RunDir(cmp_dir / m).results_csv) for m in METHODS}  # scored earlier by hand, if at all

    # 4. the table
    params = _param_counts(cfg, info)
    use_gpu = ens_plan.gpus_per_actor > 0
    per_label = ens_plan.gpus_per_label if use_gpu else ens_plan.cpus_per_label  # a pack's share, split
    per_worker = bl_plan.resources_per_worker.get("GPU" if bl_plan.use_gpu else "CPU", 0.0)
    rows = [
        {"method": "ensemble", **score_row(results["ensemble"]),
         "images_per_s": float(ens_summary["images_per_s"].sum()),
         "device_seconds": float(per_label * ens_summary["elapsed_s"].sum()),
         "budget_s": cfg.train.budget_s, "device": "GPU" if use_gpu else "CPU",
         "workers": f"{ens_plan.n_actors} label actors" + (f" ({ens_plan.n_labels} labels)"
                                                             if ens_plan.labels_per_actor > 1 else ""),
         "steps": int(ens_summary["steps"].sum()), "train_s": float(ens_summary["elapsed_s"].max()),
         "generator_params": params["ensemble"][0], "critic_params": params["ensemble"][1]},
        {"method": "baseline", **score_row(results["baseline"]),
         "images_per_s": float(bl_summary["images_per_s"]),
         "device_seconds": float(per_worker * bl_plan.num_workers * bl_summary["elapsed_s"]),
         "budget_s": cfg.train.budget_s, "device": "GPU" if bl_plan.use_gpu else "CPU",
         "workers": f"{bl_plan.num_workers} DDP workers",
         "steps": int(bl_summary["steps"]), "train_s": float(bl_summary["elapsed_s"]),
         "generator_params": params["baseline"][0], "critic_params": params["baseline"][1]},
    ]
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS + EXTRA_COLUMNS)
    write_csv(table, cmp_dir / "comparison.csv")
    plot = plot_fid_vs_time(results, cmp_dir / "fid_vs_time.png")
    scored = all(r is not None for r in results.values())
    report = write_report(cmp_dir, table, cfg, info, ens_plan, bl_plan, plot, scored)
    write_text(cmp_dir / "compare.json", json.dumps({
        "ensemble_plan": ens_plan.describe(), "baseline_plan": bl_plan.describe(),
        "baseline_resources_per_worker": bl_plan.resources_per_worker, "baseline_workers": bl_plan.num_workers,
        "budget_s": cfg.train.budget_s, "wall_s": round(time.monotonic() - t0, 2)}, indent=2))
    logger.info("wrote %s, %s", cmp_dir / "comparison.csv", report)
    return CompareResult(cmp_dir, table, report, plot, time.monotonic() - t0)


# ------------------------------------------------------------------ CLI

def cmd_compare(args) -> int:
    cfg = config_from_args(args)
    result = compare(cfg, address=args.address, evaluate=False if args.no_eval else None)
    cols = ["method", "fid", "is_mean", "kid_mean", "mean_class_fid", "class_accuracy", "images_per_s",
            "device_seconds"]
    print(result.table[cols].to_string(index=False))
    print(f"done in {result.wall_s:.0f}s: {result.report}")
    return 0


__all__ = ["compare", "CompareResult", "COMPARISON_COLUMNS"]
