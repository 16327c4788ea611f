"""How long describe() takes to validate a large folder data set, against the old serial check.

Generates CLASSES x PER_CLASS small PNGs (8x8) in a temporary directory, times
``describe(cfg)`` (the driver's check: lists and counts every class folder, opens a sample of
headers) a few times and prints the median, then times the old check, which opened every
file's header serially on the driver. Files are warm in the page cache; on a network file
system every open also pays a round trip, which the new check's threads overlap.

    .venv/bin/python bench/describe_scale.py                        # 1,000 classes x 100 images
    .venv/bin/python bench/describe_scale.py --classes 100 --per-class 50 --repeats 5
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import DatasetConfig  # noqa: E402
from workers.data import IMAGE_EXTENSIONS, describe  # noqa: E402


def make_folder(root: Path, classes: int, per_class: int, size: int = 8) -> None:
    """classes x per_class PNGs, written from a few encoded variants (encoding each is not the point)."""
    rng = np.random.default_rng(0)
    variants = []
    for _ in range(8):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
        variants.append(buf.getvalue())
    for k in range(classes):
        d = root / f"class_{k:04d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            (d / f"{i:04d}.png").write_bytes(variants[(k + i) % len(variants)])


def old_check(root: Path) -> int:
    """What describe(check_files=True) did before: rglob each class, open every header, serially."""
    n = 0
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
            if path.is_file():
                with Image.open(path) as im:
                    im.size
                n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-old", action="store_true", help="do not time the old serial check")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="wcgan-describe-") as tmp:
        root = Path(tmp) / "data"
        t0 = time.perf_counter()
        make_folder(root, args.classes, args.per_class)
        print(f"generated {args.classes} classes x {args.per_class} PNGs in {time.perf_counter() - t0:.1f} s")
        cfg = DatasetConfig(name="folder", root=str(root))

        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            info = describe(cfg)
            times.append(time.perf_counter() - t0)
        print(f"describe(check_files=True): median {statistics.median(times):.2f} s over {args.repeats} "
              f"({', '.join(f'{t:.2f}' for t in times)}); {len(info.labels)} labels, "
              f"{info.channels} channel(s), {info.image_size} px")
        t0 = time.perf_counter()
        describe(cfg, check_files=False)
        print(f"describe(check_files=False), sample cached in this process: {time.perf_counter() - t0:.2f} s")
        if not args.skip_old:
            t0 = time.perf_counter()
            n = old_check(root)
            print(f"old serial check (every header, {n} files): {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
