"""The summary of a ``benchmarks/gpu_suite.sh`` run as Markdown, ready to copy into docs/performance.md: the stage
times against their budgets, the environment line, the smoke result of every task, the pretraining-step table
(ours vs official, eager / compiled / CUDA-graphed) and the retrieval re-ranking rates with the COCO-5k projection.

    python benchmarks/gpu_suite_report.py OUT_DIR          # prints it and writes OUT_DIR/summary.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def report(out: Path) -> str:
    lines: list[str] = [f"# gpu_suite.sh results ({out})", ""]
    stages = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines()] \
        if (out / "stages.tsv").is_file() else []
    if stages:
        total = sum(float(s[2]) for s in stages)
        lines += ["| stage | status | seconds | budget s |", "|---|---|---|---|"]
        lines += [f"| {s[0]} | {s[1]} | {s[2]} | {s[3]} |" for s in stages]
        lines += [f"| total | | {total:.0f} | {sum(float(s[3]) for s in stages):.0f} |", ""]
    env_path = out / "env.json"
    if env_path.is_file():
        env = json.loads(env_path.read_text())
        pk = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        lines += [f"Environment ({env['date']}): Python {env['python']}; {pk}.", "",
                  f"Device: {env['device']}; bf16 matmul {env['matmul_n']}³: **{env['bf16_matmul_tflops']} TFLOP/s** "
                  "(the MFU denominator).", ""]
    smoke = jsonl(out / "smoke.jsonl")
    if smoke:
        passed = sum(r["status"] == "pass" for r in smoke)
        r0 = smoke[0]
        lines += [f"Smoke ({r0['device']}, {r0['precision']}, {r0['steps']} steps per task): "
                  f"{passed}/{len(smoke)} pass.",
                  "", "| task | status | seconds | final loss | error (last lines) |", "|---|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['status']} | {r['seconds']} | {fmt(r.get('final_loss'), 4)} | "
                  f"{(r.get('error') or '')[-300:].replace('|', '/')} |" for r in smoke]
        lines.append("")
    pre = jsonl(out / "pretrain.jsonl")
    if pre:
        r0 = pre[0]
        lines += [f"Pretraining step, {r0['mode']} mode, batch {r0['batch']}, {r0['precision']} "
                  f"(MFU against {fmt(r0.get('matmul_tflops'))} TFLOP/s; FLOPs of one step of the bare model, "
                  "FlopCounterMode):", "",
                  "| impl | compile | step ms | pairs/s | GFLOP/pair | TFLOP/s | MFU | peak GiB | warm-up s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in pre:
            if r["status"] == "ok":
                mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "–"
                lines.append(f"| {r['impl']} | {r['compile_mode']} | {fmt(r['step_ms'])} | {fmt(r['pairs_per_s'])} | "
                             f"{fmt(r.get('gflops_per_pair'))} | {fmt(r.get('achieved_tflops'))} | {mfu} | "
                             f"{fmt(r.get('peak_gib'), 2)} | {fmt(r.get('warmup_s'))} |")
            else:
                lines.append(f"| {r['impl']} | {r['compile_mode']} | {r['status']}: "
                             f"{r.get('error', '')[-200:].replace('|', '/')} | | | | | | |")
        lines.append("")
    rr = jsonl(out / "rerank.jsonl")
    if rr:
        r = rr[-1]
        pj = r["projection"]
        lines += [f"Retrieval re-ranking ({r['device']}, {r['preset']} at {r['image_res']} px, {r['precision']}, "
                  f"{r['images']} images / {r['texts']} texts, k = {r['k']}, ITM batch {r['itm_batch']}): feature pass "
                  f"{fmt(r['images_per_s'])} images/s, {fmt(r['texts_per_s'])} texts/s.", "",
                  "| variant | i2t pairs/s | t2i pairs/s | pairs/s | shared_kv speed-up | projected COCO-5k min "
                  "| timed |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {v['variant']} | {fmt(v['i2t_pairs_per_s'])} | {fmt(v['t2i_pairs_per_s'])} | "
                  f"{fmt(v['pairs_per_s'])} | {fmt(v['shared_kv_speedup'], 2)} | {fmt(v['projected_eval_min'], 2)} | "
                  f"{v['pairs_timed']} pairs, {v['timed']} |" for v in r["rows"]]
        if r.get("check"):
            c = r["check"]
            lines += ["", f"Scores, per_pair vs shared_kv on {c['check_pairs']} pairs: max abs diff i2t "
                          f"{c['max_abs_diff_i2t']:.3g}, t2i {c['max_abs_diff_t2i']:.3g}."]
        lines += ["", f"Projection: {pj['formula']} with I = {pj['images']}, T = {pj['texts']}, k = {pj['k']}"
                      + ("" if pj["coco_setting"] else " (not the paper's COCO-5k setting)") + ".", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="the gpu_suite.sh output folder")
    args = p.parse_args()
    out = Path(args.out_dir)
    text = report(out)
    (out / "summary.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
