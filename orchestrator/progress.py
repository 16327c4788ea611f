"""The driver's progress view of a run: one line per label for small runs, an aggregate for large ones."""

from __future__ import annotations


def format_progress(state: dict[int, dict], budget_s: float, elapsed_wall: float,
                    max_rows: int = 16) -> str:
    """One line per label for small runs; an aggregate for large ones (1,000 labels)."""
    labels = sorted(state)
    done = sum(1 for k in labels if state[k].get("state") == "done")
    failed = sum(1 for k in labels if state[k].get("state") == "failed")
    head = f"[{elapsed_wall:6.0f}s] {done}/{len(labels)} labels done" + (f", {failed} failed" if failed else "")
    if len(labels) <= max_rows:
        lines = [head]
        for k in labels:
            s = state[k]
            left = max(0.0, budget_s - float(s.get("elapsed_s", 0.0)))
            ips = s.get("images_per_s")
            w = s.get("wasserstein")
            lines.append(
                f"  label {k:>4}: {s.get('state', '?'):<9} step {int(s.get('step', 0)):>7}"
                f"  budget left {left:6.0f}s"
                + (f"  {ips:8.0f} img/s" if ips is not None else "")
                + (f"  W {w:7.3f}" if w is not None else "")
                + (f"  restarts {s['restarts']}" if s.get("restarts") else "")
            )
        return "\n".join(lines)
    steps = sorted(int(state[k].get("step", 0)) for k in labels)
    lefts = [max(0.0, budget_s - float(state[k].get("elapsed_s", 0.0))) for k in labels]
    return (f"{head}; steps min/median/max {steps[0]}/{steps[len(steps) // 2]}/{steps[-1]}; "
            f"budget left max {max(lefts):.0f}s")
