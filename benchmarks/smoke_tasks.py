"""A few training steps of every task script, each in its own process, on a small generated data set: does each
task run on this device in this precision? One row per task (pass / fail, seconds, the error's last lines); a
failing task never stops the others.

The tasks are ``run.py --task <t> --dist 1`` with the demo configs (tiny preset) and their data swapped for a
freshly generated set (``dataset.synthetic.generate``, as the tests do): pretraining (X²-VLM, with video-text
batches, and the FIBER-style two-stage recipe), image retrieval, video retrieval, multilingual retrieval (the
text-encoder swap, started from the image-retrieval run's weights), VQA, NLVR2, grounding, captioning and video QA.
Each trains ``--steps`` optimiser steps in ``--precision`` on ``--device``, then runs its own evaluation.

    python benchmarks/smoke_tasks.py --device cuda --precision bf16 --steps 5 --jobs 4 --out smoke.jsonl
    python benchmarks/smoke_tasks.py --device cpu --precision fp32 --steps 1 --tasks retrieval,vqa   # CPU check
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.subproc import end_children_on_sigterm, error_tail, run_limited  # noqa: E402

FT = "configs/finetune"


def task_table(syn: dict[str, str], work: Path) -> dict[str, dict[str, Any]]:
    """name -> {task (run.py --task), config, overrides, after (a task that must finish first)}."""
    root = syn["root"]
    data = [f"data.root={root}", f"model.text.tokenizer={syn['vocab']}"]
    pretrain = [*data, f"data.train_file=[{syn['image_text']}]", f"data.train_file_regions=[{syn['regions']}]",
                "data.images.batch_size=8", "data.regions.batch_size=8", "data.regions.max_images=4",
                f"eval.retrieval_file=[{syn['retrieval_test']}]", f"eval.grounding_file=[{syn['grounding_test']}]"]
    ft = data

    def files(prefix: str) -> list[str]:
        return [f"data.finetune.train_file=[{syn[prefix + '_train']}]",
                f"data.finetune.test_file=[{syn[prefix + '_test']}]"]

    return {
        "pretrain": {"task": "pretrain", "config": "configs/pretrain/demo.yaml",
                     "overrides": [*pretrain, f"data.train_file_videos=[{syn['videos']}]", "data.videos.batch_size=4",
                                   "model.max_frames=3"]},
        "pretrain_fiber": {"task": "pretrain", "config": "configs/pretrain/fiber_demo.yaml",
                           "overrides": pretrain, "stages": True},
        "retrieval": {"task": "retrieval", "config": f"{FT}/retrieval_demo.yaml",
                      "overrides": [*ft, *files("retrieval")]},
        "retrieval_video": {"task": "retrieval", "config": f"{FT}/retrieval_msrvtt_demo.yaml",
                            "overrides": [*ft, *files("video_retrieval")]},
        "retrieval_multilingual": {
            "task": "retrieval", "config": f"{FT}/retrieval_multilingual_demo.yaml", "after": "retrieval",
            "overrides": [f"data.root={root}", f"model.text.name_or_path={syn['xlmr']}",
                          f"model.text.swap.checkpoint={work / 'retrieval' / 'model.safetensors'}",
                          f"data.finetune.train_file=[{syn['ml_train']}]",
                          f"data.finetune.test_file_languages={{en: {syn['ml_test_en']}, de: {syn['ml_test_de']}}}"]},
        "vqa": {"task": "vqa", "config": f"{FT}/vqa_demo.yaml",
                "overrides": [*ft, *files("vqa"), f"data.finetune.answer_list={syn['answer_list']}"]},
        "nlvr": {"task": "nlvr", "config": f"{FT}/nlvr_demo.yaml", "overrides": [*ft, *files("nlvr")]},
        "grounding": {"task": "grounding", "config": f"{FT}/grounding_demo.yaml",
                      "overrides": [*ft, *files("grounding")]},
        "captioning": {"task": "captioning", "config": f"{FT}/caption_demo.yaml",
                       "overrides": [*ft, *files("caption"), "eval.caption_tokenizer=simple"],
                       "args": ["--metrics", "bleu,cider"]},
        "videoqa": {"task": "videoqa", "config": f"{FT}/videoqa_demo.yaml",
                    "overrides": [*ft, *files("video_qa"), f"data.finetune.ans2label={syn['video_qa_ans2label']}"]},
    }


def have(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def command(spec: dict[str, Any], out: Path, args: argparse.Namespace) -> list[str]:
    overrides = [*spec["overrides"], f"train.steps={args.steps}", "train.epochs=0", "train.log_every=1",
                 "train.ckpt_every=100000", "scheduler.warmup=1", f"train.precision={args.precision}",
                 f"data.num_workers={args.workers}"]
    if spec.get("stages"):  # FIBER's coarse -> fine stages must add up to train.steps
        coarse = max(1, args.steps // 2)
        overrides.append(f"train.stages=[{{steps: {coarse}, loss: {{bbox: false}}}}, "
                         f"{{steps: {args.steps - coarse}, loss: {{bbox: true}}}}]" if args.steps > 1
                         else "train.stages=[]")
    extra = list(spec.get("args", []))
    if spec["task"] == "captioning" and not have("pycocoevalcap"):
        extra = ["--metrics", ""]  # no scorer installed (as on the lent GPU machines): generate, do not score
    cmd = [sys.executable, str(ROOT / "run.py"), "--task", spec["task"], "--dist", "1", "--config",
           str(ROOT / spec["config"]), "--output_dir", str(out), "--device", args.device, *extra]
    return cmd + [a for o in overrides for a in ("--override", o)]


def last_loss(out: Path) -> float | None:
    log = out / "log.jsonl"
    if not log.exists():
        return None
    losses = [r["loss"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]
    return round(float(losses[-1]), 4) if losses else None


class Runner:
    """Runs the tasks; each row is printed and appended to ``--out`` as soon as its task ends."""

    def __init__(self, table: dict[str, dict[str, Any]], names: list[str], work: Path, args: argparse.Namespace):
        self.table, self.work, self.args = table, work, args
        self.done = {n: threading.Event() for n in names}
        self.results: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + args.budget if args.budget > 0 else float("inf")

    def finish(self, name: str, row: dict[str, Any]) -> dict[str, Any]:
        row |= {"device": self.args.device, "precision": self.args.precision, "steps": self.args.steps,
                "date": time.strftime("%Y-%m-%d")}
        with self.lock:
            self.results[name] = row
            if self.args.out:
                with open(self.args.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
            rc = row.get("rc")
            print(f"smoke {name}: {row['status'].upper()} in {row['seconds']} s"
                  + (f", final loss {row['final_loss']}" if rc == 0 else f": {row.get('error', '')[-400:]}"),
                  flush=True)
        self.done[name].set()
        return row

    def run(self, name: str) -> dict[str, Any]:
        try:
            return self._run(name)
        except Exception as e:  # noqa: BLE001 - a broken task row, never a hung dependant
            return self.finish(name, {"task": name, "status": "fail", "rc": None, "seconds": 0.0,
                                      "error": f"{type(e).__name__}: {e}"})

    def _run(self, name: str) -> dict[str, Any]:
        spec, args = self.table[name], self.args
        after = spec.get("after")
        if after:
            self.done[after].wait()
            if self.results.get(after, {}).get("status") != "pass":
                return self.finish(name, {"task": name, "status": "skip", "seconds": 0.0,
                                          "error": f"needs '{after}', which did not pass"})
        left = self.deadline - time.monotonic()
        if left < 5:
            return self.finish(name, {"task": name, "status": "skip", "seconds": 0.0,
                                      "error": f"stage budget ({args.budget:.0f} s) spent before it started"})
        out = self.work / name
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1",
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        res = run_limited(command(spec, out, args), min(args.timeout, left), cwd=ROOT, env=env)
        row: dict[str, Any] = {"task": name, "status": "pass" if res.rc == 0 else "fail", "rc": res.rc,
                               "seconds": round(time.perf_counter() - t0, 1), "final_loss": last_loss(out)}
        if res.rc != 0:
            row["error"] = error_tail(res.stderr or res.stdout, args.tail)
        return self.finish(name, row)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--precision", default="bf16", help="train.precision: fp32, bf16 or fp16")
    p.add_argument("--steps", type=int, default=5, help="optimiser steps per task")
    p.add_argument("--jobs", type=int, default=4, help="tasks run at the same time")
    p.add_argument("--workers", type=int, default=0, help="data.num_workers of each task")
    p.add_argument("--timeout", type=float, default=120, help="seconds allowed per task")
    p.add_argument("--budget", type=float, default=0,
                   help="seconds for all tasks (0: no limit); a task is cut to what is left, or skipped")
    p.add_argument("--tasks", default="", help="comma list of task names (default: all)")
    p.add_argument("--images", type=int, default=48, help="generated images (a quarter held out for evaluation)")
    p.add_argument("--videos", type=int, default=12, help="generated videos (a quarter held out)")
    p.add_argument("--tail", type=int, default=6, help="stderr lines kept of a failing task")
    p.add_argument("--work", help="folder for the data and the runs (default: a temporary one, removed)")
    p.add_argument("--out", help="append one JSON row per task to this file")
    args = p.parse_args()

    end_children_on_sigterm()
    from dataset.synthetic import generate, generate_multilingual
    work = Path(args.work or tempfile.mkdtemp(prefix="x2vlm_smoke_"))
    t0 = time.perf_counter()
    syn = generate(work / "syn", seed=0, n_images=args.images, n_videos=args.videos)
    syn |= generate_multilingual(syn)
    print(f"smoke: data generated in {time.perf_counter() - t0:.1f} s ({work / 'syn'})", flush=True)
    table = task_table(syn, work)
    names = [n.strip() for n in args.tasks.split(",") if n.strip()] or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; known: {', '.join(table)}")
    names = [d for n in names for d in (table[n].get("after"), n) if d]  # a dependency outside the selection too
    names = list(dict.fromkeys(names))
    runner = Runner(table, names, work, args)
    # dependants last, so that a worker waiting on one never holds up the task it waits for
    order = sorted(names, key=lambda n: "after" in table[n])
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(runner.run, order))
    rows = [runner.results[n] for n in names]
    passed = sum(r["status"] == "pass" for r in rows)
    print(f"smoke summary: {passed}/{len(rows)} tasks pass ({args.device}, {args.precision}, {args.steps} steps, "
          f"{time.perf_counter() - t0:.0f} s): " + ", ".join(f"{r['task']} {r['status']}" for r in rows))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
