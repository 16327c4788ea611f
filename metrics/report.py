"""report.md: the first thing a person opens in a run directory.

Built only from files in the run directory (results.csv, per_label.csv, metrics.json, summary.csv,
config.yaml, samples/grid.png), so ``wcgan report --run DIR`` re-renders it anywhere.
Classifier-space scores are labelled as such, with the classifier's held-out accuracy beside each;
FID always comes with its sample counts.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from metrics.plots import make_plots, space_label

PER_LABEL_ROWS = 50


def _isnan(x) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def _fmt(x, spec: str = ".3f") -> str:
    return "n/a" if _isnan(x) else format(float(x), spec)


def _n(x) -> str:
    return "?" if _isnan(x) else str(int(x))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _read_csv(path: Path, **kw) -> Optional[pd.DataFrame]:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, **kw)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None


def _get(results: pd.DataFrame, ev: str, metric: str, label: str = "all", time_s: Optional[float] = None):
    sel = results[(results["eval"] == ev) & (results["metric"] == metric) & (results["label"] == label)]
    if time_s is not None:
        sel = sel[sel["eval_time_s"] == time_s]
    return None if sel.empty else sel.iloc[0]


def _score_name(metric: str, space: str, acc) -> str:
    """'FID (classifier space, classifier acc 0.992)' / 'FID (Inception)'."""
    return f"{metric} ({space_label(space, acc)})"


def _headline(results: pd.DataFrame, meta: dict) -> list[str]:
    fid = _get(results, "final", "fid")
    if fid is None:
        return ["No final evaluation in results.csv."]
    space, acc = fid["feature_space"], fid["classifier_accuracy"]
    t = fid["eval_time_s"]
    lines = [f"## Final ensemble (after {_fmt(t, '.0f')} s of training per label)", ""]
    rows = []
    floor = _get(results, "real_floor", "fid")
    rows.append([
        _score_name("FID", space, acc) + " ↓", f"**{_fmt(fid['value'], '.2f')}**",
        f"{_n(fid['n_fake'])} generated vs {_n(fid['n_real'])} real (train split)",
        "n/a" if floor is None else
        f"{_fmt(floor['value'], '.2f')} ({_n(floor['n_fake'])} held-out vs {_n(floor['n_real'])} train)",
    ])
    km, ks = _get(results, "final", "kid_mean"), _get(results, "final", "kid_std")
    if km is not None:
        fkm, fks = _get(results, "real_floor", "kid_mean"), _get(results, "real_floor", "kid_std")
        sub = meta.get("kid_subset_size")
        size = min(x for x in (sub, km["n_fake"], km["n_real"]) if not _isnan(x)) if sub else None
        rows.append([
            _score_name("KID", space, acc) + " ↓", f"{_fmt(km['value'], '.4f')} ± {_fmt(ks['value'] if ks is not None else None, '.4f')}",
            f"{meta.get('kid_subsets', '?')} subsets of {_n(size)} from {_n(km['n_fake'])} generated / {_n(km['n_real'])} real",
            "n/a" if fkm is None else f"{_fmt(fkm['value'], '.4f')} ± {_fmt(fks['value'] if fks is not None else None, '.4f')}",
        ])
    im, isd = _get(results, "final", "is_mean"), _get(results, "final", "is_std")
    if im is not None:
        rim, risd = _get(results, "real_floor", "is_mean"), _get(results, "real_floor", "is_std")
        rows.append([
            _score_name("IS", space, acc) + " ↑",
            f"{_fmt(im['value'], '.2f')} ± {_fmt(isd['value'] if isd is not None else None, '.2f')}",
            f"{_n(im['n_fake'])} generated, mean ± std over {meta.get('is_splits', '?')} splits (seed {meta.get('seed', '?')})",
            "n/a" if rim is None else
            f"{_fmt(rim['value'], '.2f')} ± {_fmt(risd['value'] if risd is not None else None, '.2f')} "
            f"(held-out real, {_n(rim['n_fake'])})",
        ])
    ca = _get(results, "final", "class_accuracy")
    if ca is not None:
        rca = _get(results, "real_floor", "class_accuracy")
        rows.append([
            f"class accuracy (classifier acc {_fmt(ca['classifier_accuracy'])}) ↑", f"{_fmt(ca['value'])}",
            f"{_n(ca['n_fake'])} generated: share of generator k's samples classified as k",
            "n/a" if rca is None else f"{_fmt(rca['value'])} (held-out real, {_n(rca['n_fake'])})",
        ])
    lines.append(_table(["score", "value", "samples", "real floor: train vs held-out split"], rows))
    return lines


def _over_time(results: pd.DataFrame) -> list[str]:
    ev = results[results["eval"].isin(["checkpoint", "final"]) & (results["label"] == "all")]
    times = sorted(ev["eval_time_s"].dropna().unique())
    if len(times) == 0:
        return []
    first = ev[ev["metric"] == "fid"].iloc[0]
    space, acc = first["feature_space"], first["classifier_accuracy"]
    ca = ev[ev["metric"] == "class_accuracy"]["classifier_accuracy"]
    clf_acc = ca.iloc[0] if len(ca) else float("nan")
    rows = []
    for t in times:
        at = ev[ev["eval_time_s"] == t].drop_duplicates("metric", keep="last").set_index("metric")
        def v(metric, spec=".2f"):
            return _fmt(at["value"].get(metric), spec) if metric in at.index else "n/a"
        name = at["eval"].iloc[-1]
        n = f"{_n(at['n_fake'].get('fid'))} / {_n(at['n_real'].get('fid'))}" if "fid" in at.index else "?"
        rows.append([f"{t:.0f}" + (" (final)" if name == "final" else ""), v("fid"), n,
                     f"{v('is_mean')} ± {v('is_std')}", v("kid_mean", ".4f"), v("class_accuracy", ".3f")])
    return [
        _table(["training time (s)", _score_name("FID", space, acc), "n generated / real",
                _score_name("IS", space, acc), _score_name("KID", space, acc),
                f"class accuracy (classifier acc {_fmt(clf_acc)})"],
               rows)]


def _per_label(per_label: pd.DataFrame, summary: Optional[pd.DataFrame]) -> list[str]:
    if per_label is None or per_label.empty:
        return []
    df = per_label.copy()
    if summary is not None and "label" in summary:
        keep = [c for c in ("label", "steps", "images_per_s", "wasserstein", "restarts") if c in summary]
        df = df.merge(summary[keep], on="label", how="left")
    df = df.sort_values("label")
    space, acc = df["feature_space"].iloc[0], df["classifier_accuracy"].iloc[0]
    headers = ["label", "name", _score_name("FID", space, acc), "n gen / real", "floor FID (n held-out / train)",
               f"class accuracy (classifier acc {_fmt(acc)})", "classifier on held-out real of k"]
    extra = [c for c in ("steps", "images_per_s", "wasserstein", "restarts") if c in df]
    headers += [c.replace("_", " ") for c in extra]
    rows = []
    for _, r in df.head(PER_LABEL_ROWS).iterrows():
        row = [str(r["label"]), str(r.get("label_name", r["label"])), _fmt(r["fid"], ".2f"),
               f"{_n(r['n_fake'])} / {_n(r['n_real'])}",
               f"{_fmt(r.get('fid_floor'), '.2f')} ({_n(r.get('n_heldout'))} / {_n(r['n_real'])})",
               _fmt(r.get("class_accuracy")), _fmt(r.get("heldout_class_accuracy"))]
        for c in extra:
            row.append(_fmt(r[c], ".0f") if c in ("steps", "images_per_s", "restarts") else _fmt(r[c], ".3f"))
        rows.append(row)
    out = [_table(headers, rows)]
    if len(df) > PER_LABEL_ROWS:
        out.append(f"\n(first {PER_LABEL_ROWS} of {len(df)} labels; all of them are in `per_label.csv`)")
    return out


def _space_banner(meta: dict, results: Optional[pd.DataFrame]) -> list[str]:
    space = meta.get("feature_space")
    if space is None and results is not None and not results.empty:
        space = results["feature_space"].iloc[0]
    clf = meta.get("classifier") or {}
    if space == "classifier":
        return [
            f"> **Scores are in classifier space, not Inception space.** FID, KID and IS here use the "
            f"{clf.get('feature_dim', '?')}-d features and the logits of a small CNN trained on this data set's "
            f"training split (held-out accuracy **{_fmt(clf.get('accuracy'))}** on {clf.get('n_test', '?')} "
            f"images, {clf.get('num_classes', '?')} classes). They compare runs scored by the same classifier; "
            f"they are not comparable with published Inception-based FID or IS figures. "
            f"({meta.get('feature_space_reason', '')})",
        ]
    if space == "inception":
        lines = ["> Scores use torch-fidelity's InceptionV3 (pool3 2048-d features for FID/KID, logits for IS; "
                 "TF1-compatible resize, antialias off), as in the literature. "
                 f"({meta.get('feature_space_reason', '')})"]
        if clf:
            lines.append(">")
            lines.append(f"> Class accuracy uses a small CNN trained on the data set "
                         f"(held-out accuracy {_fmt(clf.get('accuracy'))}).")
        return lines
    return []


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".md", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def render_report(run_dir: str | os.PathLike) -> Path:
    """(Re)writes run_dir/report.md and the plots from the files in the run directory; returns the report path."""
    run_dir = Path(run_dir)
    results = _read_csv(run_dir / "results.csv", dtype={"label": str})
    per_label = _read_csv(run_dir / "per_label.csv")
    summary = _read_csv(run_dir / "summary.csv")
    meta = {}
    if (run_dir / "metrics.json").is_file():
        try:
            meta = json.loads((run_dir / "metrics.json").read_text())
        except json.JSONDecodeError:
            meta = {}
    cfg = None
    if (run_dir / "config.yaml").is_file():
        try:
            from orchestrator.config import load_config

            cfg = load_config(run_dir / "config.yaml")
        except Exception:
            cfg = None
    plots = make_plots(run_dir)

    lines = [f"# wcgan run `{run_dir.name}`", ""]
    if cfg is not None:
        labels = meta.get("labels") or cfg.dataset.labels
        n_labels = len(labels) if isinstance(labels, list) else "all"
        lines.append(f"Data set **{cfg.dataset.name}** ({n_labels} labels, {meta.get('image_size', cfg.dataset.image_size or 'native')} px), "
                     f"one WGAN-GP generator per label, training budget {cfg.train.budget_s:g} s per label, "
                     f"{meta.get('samples_per_label', cfg.metrics.samples_per_label)} samples per label scored.")
        lines.append("")
    lines += _space_banner(meta, results)
    lines.append("")
    if results is None or results.empty:
        lines += ["Not scored yet: run `wcgan evaluate --run " + str(run_dir) + "`.", ""]
    else:
        lines += _headline(results, meta) + [""]
        lines += ["FID depends on the number of samples (it is biased upwards for small n): compare figures only "
                  "at equal counts, and read them against the real floor, the FID between the training and "
                  "held-out splits of the real data in the same feature space.", ""]
        over = _over_time(results)
        if over:
            lines += ["## Over training time", ""]
            if "fid_over_time" in plots:
                lines += ["![FID and IS against training time](plots/fid_over_time.png)", ""]
            lines += over + [""]
    pl = _per_label(per_label, summary)
    if pl:
        lines += ["## Per label", "",
                  "Per-class FID compares generator k with the real training images of label k; with a few hundred "
                  "images per class it is strongly biased upwards, so read it against that label's floor and its n.", ""]
        if "per_class_fid" in plots:
            lines += ["![per-class FID and class accuracy](plots/per_class_fid.png)", ""]
        lines += pl + [""]
    elif summary is not None and not summary.empty:
        lines += ["## Training summary", "",
                  _table(list(summary.columns), [[str(v) for v in r] for r in summary.itertuples(index=False)]), ""]
    if (run_dir / "samples" / "grid.png").is_file():
        lines += ["## Samples", "", "One row per label (generator k in row k).", "",
                  "![samples, one row per label](samples/grid.png)", ""]
    lines += ["## Files", "",
              "- `results.csv`: one row per evaluation and metric (eval, eval_time_s, metric, label, value, "
              "n_fake, n_real, feature_space, classifier_accuracy); `real_floor` rows use the held-out split "
              "in place of generated images, so their n_fake is the held-out count",
              "- `per_label.csv`: per-class FID, its floor and class accuracy of the final ensemble",
              "- `summary.csv`: training summary per label; `labels/<k>/history.csv`: training curves",
              "- `metrics.json`: how the scores were computed (feature space, classifier, seeds, sample counts)",
              ""]
    path = run_dir / "report.md"
    _write_atomic(path, "\n".join(lines))
    return path
