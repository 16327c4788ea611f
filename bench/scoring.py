"""Scoring throughput on this machine: features per second in classifier and Inception space on
the CPU, and the time of the standard protocol (50,000 generated images) on a digits run.

The Inception figure uses a randomly initialised InceptionV3 of torch-fidelity's architecture
(the real weights cannot be downloaded here): the same arithmetic, so the same speed.
Run: `python bench/scoring.py` (also part of `make bench`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.config import dump_config, load_config  # noqa: E402
from core.rundir import RunDir, write_text  # noqa: E402


def rate(extract, images: torch.Tensor, batch: int, reps: int) -> float:
    """Median images/s of `extract` over `reps` passes of `images` in batches."""
    extract(images[:batch])  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(0, len(images), batch):
            extract(images[i:i + batch])
        times.append(time.perf_counter() - t0)
    return len(images) / statistics.median(times)


def random_inception(path: Path):
    """torch-fidelity's InceptionV3 with random weights, saved and accepted for this process only."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    from metrics import inception as I

    real_load = fe.load_state_dict_from_url
    fe.load_state_dict_from_url = lambda *a, **k: {}
    real_state = fe.FeatureExtractorInceptionV3.load_state_dict
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None
    try:
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict = real_load, real_state
    torch.save(torch.nn.Module.state_dict(net), path)
    I.ACCEPTED_SHA256[I.sha256_file(path)] = "bench: a random InceptionV3"
    return I.InceptionFeatures(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="generator steps per digit label before scoring")
    args = parser.parse_args()
    from metrics.classifier import get_classifier
    from metrics.evaluate import evaluate_run
    from workers.trainer import LabelTrainer

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = load_config("experiments/digits.yaml", [f"run.storage={tmp}", "train.budget_s=3600",
                                                      f"train.max_steps={args.steps}", "metrics.every_s=null"])
        clf = get_classifier(cfg.dataset, tmp, 8, device="cpu")
        digits = torch.randint(0, 256, (10_000, 1, 8, 8), dtype=torch.uint8)
        clf_rate = rate(lambda x: clf.model.features_and_logits(x), digits, 256, args.reps)
        inc = random_inception(tmp / "inception.pth").eval()
        rgb = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
        with torch.no_grad():
            inc_rate = rate(inc.extract, rgb, 64, max(1, args.reps - 1))

        run = RunDir(tmp / "digits")
        t0 = time.perf_counter()
        LabelTrainer(str(run.path), cfg.to_dict(), list(range(10)), "bench", threads=threads).run()
        train_s = time.perf_counter() - t0
        write_text(run.config, dump_config(cfg))
        timings = {}
        for protocol in ("quick", "standard"):
            t0 = time.perf_counter()
            evaluate_run(run.path, cfg=load_config(run.config, [f"metrics.protocol={protocol}"]))
            timings[protocol] = time.perf_counter() - t0
    print(f"\nscoring on {threads} CPU thread(s), medians of {args.reps}:")
    print(f"  classifier space (digits 8x8)        : {clf_rate:9.0f} images/s")
    print(f"  Inception space (32x32 -> 299, 2048-d): {inc_rate:9.1f} images/s")
    print(f"  digits run (10 labels x {args.steps} steps, trained in {train_s:.0f}s), classifier space:")
    print(f"    quick protocol    (200 per label, 2,000 in all): {timings['quick']:6.1f}s")
    print(f"    standard protocol (50,000 by class frequency)  : {timings['standard']:6.1f}s "
          f"(reference features cached by the quick run)")


if __name__ == "__main__":
    main()
