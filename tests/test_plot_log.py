"""scripts/plot_log.py: training curves from log.jsonl into a PNG."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("plot_log", ROOT / "scripts" / "plot_log.py")
plot_log = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_log)


def write_log(folder: Path, steps: int = 30, resumed_from: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in range(10, steps + 1, 10):
        lines.append({"step": s, "loss": 3.0 / s, "loss_itc": 1.0 / s, "loss_itm": 0.69, "lr": 1e-4 * s / steps,
                      "images_per_s": 40.0, "skipped_nonfinite": 0})
    if resumed_from is not None:  # a resumed run logs these steps again; the later record wins
        lines.append({"step": resumed_from, "loss": 99.0, "loss_itc": 1.0, "loss_itm": 0.5, "lr": 1e-5})
    text = "\n".join(json.dumps(r) for r in lines) + "\n{\"step\": 40, \"loss\"\n"  # last write cut short
    (folder / "log.jsonl").write_text(text)
    return folder / "log.jsonl"


def test_read_log_keeps_last_record_per_step_and_skips_broken_lines(tmp_path: Path) -> None:
    log = write_log(tmp_path / "run", resumed_from=20)
    records, skipped = plot_log.read_log(log.parent)
    assert [r["step"] for r in records] == [10, 20, 30] and skipped == 1
    assert records[1]["loss"] == 99.0
    assert plot_log.plotted_keys([records]) == ["loss", "loss_itc", "loss_itm", "lr"]


def test_smooth() -> None:
    assert plot_log.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert plot_log.smooth([1.0, 2.0], 1) == [1.0, 2.0]


def test_plot_writes_png_with_one_panel_per_loss_and_lr(tmp_path: Path) -> None:
    a, b = write_log(tmp_path / "a"), write_log(tmp_path / "b", steps=50)
    out = tmp_path / "curves.png"
    counts = plot_log.main([str(a), str(b.parent), "--out", str(out), "--smooth", "2"])
    assert counts == {"loss": 8, "loss_itc": 8, "loss_itm": 8, "lr": 8}
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > im.height > 100  # a 2 x 3 grid of panels
    only = plot_log.main([str(a), "--keys", "images_per_s"])
    assert only == {"images_per_s": 3} and (a.parent / "curves.png").is_file()


def test_empty_log_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "log.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no log records"):
        plot_log.plot([tmp_path], tmp_path / "x.png")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_log.py"), str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "training log not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
