"""Plot training curves from one or more JSON-lines logs (``output_dir/log.jsonl``) into a PNG.

    python scripts/plot_log.py output/pretrain_demo                     # → output/pretrain_demo/curves.png
    python scripts/plot_log.py out/a/log.jsonl out/b/log.jsonl --out compare.png --smooth 5

One panel per loss (every ``loss*`` field: ``loss``, ``loss_itc``, ``loss_itm``, ``loss_mlm``, ``loss_bbox``,
...) plus one for the learning rate (``lr``); ``--keys`` adds or picks other numeric fields (``images_per_s``).
Several logs are drawn as one line each, labelled by their folder. A step logged twice (a run resumed from an
earlier checkpoint) keeps its last record; lines that are not JSON (a write cut short) are skipped and counted.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

LOG_NAME = "log.jsonl"


def read_log(path: str | Path) -> tuple[list[dict], int]:
    """``(records sorted by step, one per step — the last one written; lines skipped)`` of a log file or of
    the ``log.jsonl`` in a folder."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    by_step: dict[int, dict] = {}
    skipped = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not isinstance(record, dict) or not isinstance(record.get("step"), int | float):
                skipped += 1
                continue
            by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)], skipped


def plotted_keys(runs: list[list[dict]], keys: list[str] | None = None) -> list[str]:
    """The fields to draw: ``keys`` if given, else every ``loss*`` field (``loss`` first) and then ``lr``."""
    if keys:
        return list(keys)
    seen: list[str] = []
    for records in runs:
        for r in records:
            seen += [k for k, v in r.items() if k.startswith("loss") and k not in seen and _is_number(v)]
    losses = sorted(seen, key=lambda k: (k != "loss", k))
    has_lr = any("lr" in r for records in runs for r in records)
    return losses + (["lr"] if has_lr else [])


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (1 = unchanged)."""
    if window <= 1:
        return list(values)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot(logs: list[str | Path], out: str | Path, keys: list[str] | None = None, window: int = 1,
         title: str | None = None) -> dict[str, int]:
    """Draw the curves of ``logs`` into the PNG ``out``; returns ``{key: points drawn}`` over all runs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, labels = [], []
    for log in logs:
        records, skipped = read_log(log)
        if skipped:
            print(f"{log}: skipped {skipped} unreadable line(s)", file=sys.stderr)
        if not records:
            raise ValueError(f"{log}: no log records (is the run past its first train.log_every steps?)")
        runs.append(records)
        p = Path(log)
        labels.append((p if p.is_dir() else p.parent).name or str(p))
    names = plotted_keys(runs, keys)
    if not names:
        raise ValueError("nothing to plot: the logs have no loss* or lr fields (pick fields with --keys)")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    counts: dict[str, int] = {}
    for ax, name in zip(axes.flat, names, strict=False):
        counts[name] = 0
        for records, label in zip(runs, labels, strict=True):
            points = [(r["step"], float(r[name])) for r in records if _is_number(r.get(name))]
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            ax.plot(steps, smooth(list(values), window), label=label, linewidth=1.2)
            counts[name] += len(points)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if len(runs) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", help="log.jsonl files, or output folders holding one")
    p.add_argument("--out", help="PNG to write (default: curves.png next to the first log)")
    p.add_argument("--keys", nargs="+", help="fields to plot instead of every loss* field and lr")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window in log records (default: 1, off)")
    p.add_argument("--title", help="figure title")
    args = p.parse_args(argv)
    first = Path(args.logs[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent) / "curves.png"
    counts = plot(args.logs, out, args.keys, args.smooth, args.title)
    print(f"wrote {out}: " + ", ".join(f"{k} ({n} points)" for k, n in counts.items()))
    return counts


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from utils.cli import cli_main
    cli_main(main)
