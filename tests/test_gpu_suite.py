"""benchmarks/gpu_suite.sh, the prepared GPU check: its CPU dry run produces every stage's rows (slow: ~4 min on the
2-core CPU), the smoke stage covers every task of run.py, and the report reads the rows back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import ROOT

SUITE = ROOT / "benchmarks" / "gpu_suite.sh"


def test_script_parses_and_rejects_an_unknown_stage(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", str(SUITE)], check=True)
    proc = subprocess.run(["bash", str(SUITE), str(tmp_path / "out"), "--dry-run", "no_such_stage"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 2 and "unknown stage 'no_such_stage'" in proc.stdout


def test_smoke_covers_every_task_of_run_py(tmp_path: Path) -> None:
    from benchmarks.smoke_tasks import task_table
    from run import TASKS
    table = task_table(defaultdict(lambda: "x"), tmp_path)
    assert set(TASKS) <= {spec["task"] for spec in table.values()}
    for spec in table.values():  # every config a smoke row names exists
        assert (ROOT / spec["config"]).is_file(), spec["config"]
        assert spec.get("after") is None or spec["after"] in table


def test_report_reads_the_rows(tmp_path: Path) -> None:
    from benchmarks.gpu_suite_report import report
    (tmp_path / "stages.tsv").write_text("env\tok\t3\t25\nsmoke\tfail(rc 1)\t9\t110\n")
    (tmp_path / "smoke.jsonl").write_text(json.dumps(
        {"task": "vqa", "status": "fail", "seconds": 9.0, "final_loss": None, "error": "a | b", "device": "cuda",
         "precision": "bf16", "steps": 5}) + "\n")
    (tmp_path / "pretrain.jsonl").write_text(json.dumps(
        {"impl": "ours", "compile_mode": "default", "status": "timeout", "error": "timed out after 100 s",
         "mode": "image", "batch": 128, "precision": "bf16", "matmul_tflops": 790.0}) + "\n")
    text = report(tmp_path)
    assert "| smoke | fail(rc 1) | 9 | 110 |" in text and "| total | | 12 | 135 |" in text
    assert "| vqa | fail | 9.0 | – | a / b |" in text
    assert "| ours | default | timeout: timed out after 100 s |" in text


@pytest.mark.slow  # the whole dry run: ~4 min on the 2-core CPU
def test_dry_run_produces_every_stage(tmp_path: Path) -> None:
    from benchmarks.official_step import official_code_present
    from benchmarks.pretrain_compare import DEFAULT_PLAN
    from benchmarks.smoke_tasks import task_table
    out = tmp_path / "suite"
    proc = subprocess.run(["bash", str(SUITE), str(out), "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"results: {out}/summary.md" in proc.stdout

    stages = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines()]
    assert [s[0] for s in stages] == ["env", "smoke", "pretrain", "rerank"]
    assert all(s[1] == "ok" for s in stages), stages
    for name in ("env", "smoke", "pretrain", "rerank"):  # each stage's one-line summary
        assert f"=== {name}: ok in " in proc.stdout

    env = json.loads((out / "env.json").read_text())
    assert env["bf16_matmul_tflops"] > 0 and "torch" in env["packages"]

    smoke = [json.loads(x) for x in (out / "smoke.jsonl").read_text().splitlines()]
    assert sorted(r["task"] for r in smoke) == sorted(task_table(defaultdict(lambda: "x"), out))
    assert all(r["status"] == "pass" and r["final_loss"] is not None for r in smoke), smoke

    pre = [json.loads(x) for x in (out / "pretrain.jsonl").read_text().splitlines()]
    assert [f"{r['impl']}:{r['compile_mode']}" for r in pre] == DEFAULT_PLAN.split(",")
    official_here = official_code_present()  # the official code is git-ignored: a fresh clone has none
    for r in pre:
        if r["impl"] == "official" and not official_here:
            assert r["status"] == "fail" and "official_step.py: " in r["error"], r  # one line naming what is missing
            continue
        assert r["status"] == "ok", r
        assert r["pairs_per_s"] > 0 and r["flops_per_step"] > 0 and r["mfu"] > 0 and r["warmup_s"] >= 0

    rr = json.loads((out / "rerank.jsonl").read_text().splitlines()[-1])
    assert [v["variant"] for v in rr["rows"]] == ["shared_kv", "repeated", "per_pair"]
    assert all(v["i2t_pairs_per_s"] > 0 and v["t2i_pairs_per_s"] > 0 for v in rr["rows"])
    assert rr["check"]["max_abs_diff_i2t"] < 1e-4 and rr["check"]["max_abs_diff_t2i"] < 1e-4
    assert rr["projection"]["eval_min"]["shared_kv"] > 0 and "I*k/i2t_pairs_per_s" in rr["projection"]["formula"]

    summary = (out / "summary.md").read_text()
    for heading in ("| stage | status |", "| task | status |", "| impl | compile |", "| variant | i2t pairs/s |"):
        assert heading in summary
