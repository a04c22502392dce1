"""Command lines: every script's --help documents every option; user errors end in one clear line."""
from __future__ import annotations

import argparse
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataset.synthetic import generate
from tests.conftest import ROOT
from utils.cli import report_user_error
from utils.config import ConfigError
from utils.evaluation import progress_bar

SCRIPTS = ["run.py", "Pretrain.py", "Retrieval.py", "VQA.py", "NLVR.py", "Grounding.py", "Captioning.py", "VideoQA.py",
           "scripts/demo.py", "scripts/winoground.py", "scripts/convert_datasets.py", "scripts/json_to_wds.py",
           "scripts/plot_log.py", "scripts/config_reference.py", "scripts/draw_architecture.py",
           "benchmarks/data_throughput.py", "benchmarks/pretrain_throughput.py", "benchmarks/retrieval_rerank.py",
           "benchmarks/op_count.py", "benchmarks/loader_per_core.py", "benchmarks/smoke_tasks.py",
           "benchmarks/official_step.py", "benchmarks/pretrain_compare.py", "benchmarks/env_report.py",
           "benchmarks/gpu_suite_report.py",
           "dataset/synthetic.py", "scripts/build_vocab.py"]


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def _parser_of(script: str, monkeypatch) -> argparse.ArgumentParser:
    """The argparse parser a script's main() builds (caught at parse time, nothing runs)."""
    def capture(self, args=None, namespace=None):
        raise _Captured(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    monkeypatch.setattr(sys, "argv", [script])
    name = "cli_" + script.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    main = module.main
    with pytest.raises(_Captured) as caught:
        main([]) if main.__code__.co_argcount else main()
    return caught.value.parser


def _undocumented(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    missing = []
    if not (parser.description or "").strip():
        missing.append(f"{prefix or parser.prog}: no description")
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _undocumented(sub, f"{prefix}{name} ")
            continue
        if not (action.help or "").strip():
            missing.append(prefix + ("/".join(action.option_strings) or action.dest))
    return missing


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_every_option(script: str, monkeypatch) -> None:
    parser = _parser_of(script, monkeypatch)
    assert _undocumented(parser) == [], f"{script}: options without help text"
    assert parser.format_help()


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_unknown_config_key_is_one_line(tmp_path: Path) -> None:
    line = _one_line(_run(["Retrieval.py", "--config", "configs/finetune/retrieval_demo.yaml",
                           "--override", "model.bogus_key=1", "--output_dir", str(tmp_path)], tmp_path))
    assert "Retrieval.py: error: unknown config key 'model.bogus_key'" in line
    assert "docs/configuration.md" in line


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    line = _one_line(_run(["Pretrain.py", "--config", str(tmp_path / "nope.yaml")], tmp_path))
    assert "config file not found" in line and "nope.yaml" in line and "--config" in line


def test_missing_data_file_is_one_line(tmp_path: Path) -> None:
    files = generate(tmp_path / "syn", n_images=4, n_videos=0)
    missing = tmp_path / "no_such_annotations.json"
    line = _one_line(_run(["Grounding.py", "--config", "configs/finetune/grounding_demo.yaml", "--device", "cpu",
                           "--output_dir", str(tmp_path / "out"),
                           "--override", f"model.text.tokenizer={files['vocab']}",
                           "--override", f"data.finetune.train_file=[{missing}]"], tmp_path))
    assert f"annotation file not found: {missing}" in line and "docs/data_preparation.md" in line


def test_missing_checkpoint_and_image_are_one_line(tmp_path: Path) -> None:
    files = generate(tmp_path / "syn", n_images=4, n_videos=0)
    line = _one_line(_run(["scripts/demo.py", "--checkpoint", str(tmp_path / "gone.th"), "--config",
                           "configs/models/tiny.yaml", "--image", "x.jpg", "--text", "a"], tmp_path))
    assert "checkpoint not found" in line and "gone.th" in line
    line = _one_line(_run(["scripts/demo.py", "--config", "configs/models/tiny.yaml", "--override",
                           f"model.text.tokenizer={files['vocab']}", "--image", str(tmp_path / "x.jpg"),
                           "--text", "a"], tmp_path))
    assert "image file not found" in line and "x.jpg" in line


def test_report_user_error_is_one_line() -> None:
    text = report_user_error("X.py", ConfigError("unknown config key 'a.b' in f.yaml;\nknown keys here: c, d"))
    assert "\n" not in text and text.startswith("X.py: error: unknown config key 'a.b'")


def test_progress_bar_rank0_tty_and_switch(monkeypatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert list(progress_bar(range(3), "x")) == [0, 1, 2]  # pytest's stderr is no terminal: no bar, same values

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert list(progress_bar(range(3), "embed texts")) == [0, 1, 2]
    assert "embed texts" in term.getvalue()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    items = [1, 2]
    assert progress_bar(items, "off") is items


def _tiny_checkpoint(tmp_path: Path, *overrides: str) -> Path:
    import torch

    from models.checkpoint import save_checkpoint_weights
    from models.x2vlm import X2VLM
    from utils.config import load_config
    torch.manual_seed(0)
    model = X2VLM.from_config(load_config(ROOT / "configs" / "models" / "tiny.yaml", list(overrides)),
                              load_weights=False)
    return save_checkpoint_weights(model, tmp_path / "ckpt")


def test_tiny_checkpoint_into_base_model_stops_with_one_line(tmp_path: Path) -> None:
    """3 of 575 keys would load: the script stops before training, naming the parts and what to do."""
    files = generate(tmp_path / "syn", n_images=4, n_videos=0)
    ckpt = _tiny_checkpoint(tmp_path)
    config = tmp_path / "base_grounding.yaml"  # the grounding demo at base size (later bases win)
    config.write_text(f"base: [{ROOT / 'configs/finetune/grounding_demo.yaml'}, "
                      f"{ROOT / 'configs/models/x2vlm_base.yaml'}]\n")
    line = _one_line(_run(["Grounding.py", "--config", str(config), "--device", "cpu", "--checkpoint", str(ckpt),
                           "--output_dir", str(tmp_path / "out"),
                           "--override", f"model.text.tokenizer={files['vocab']}"], tmp_path))
    assert "Grounding.py: error: checkpoint" in line and "does not fit this model" in line
    for part in ("vision encoder:", "text encoder:", "fusion:", "shape-mismatched", "--allow-partial-load"):
        assert part in line, part
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize(("source", "target"), [("x2vlm", "fiber"), ("fiber", "x2vlm")])
def test_checkpoint_of_the_other_architecture_stops_with_one_line(tmp_path: Path, source: str, target: str) -> None:
    files = generate(tmp_path / "syn", n_images=4, n_videos=0)
    ckpt = _tiny_checkpoint(tmp_path, f"model.architecture={source}", "model.fiber.layers=1")
    args = ["Grounding.py", "--config", "configs/finetune/grounding_demo.yaml", "--device", "cpu",
            "--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "out"),
            "--override", f"model.text.tokenizer={files['vocab']}", "--override", f"model.architecture={target}",
            "--override", "model.fiber.layers=1", "--override", "train.steps=1",
            "--override", "data.finetune.batch_size_train=2", "--override", f"data.root={files['root']}",
            "--override", f"data.finetune.train_file=[{files['grounding_train']}]",
            "--override", f"data.finetune.test_file=[{files['grounding_test']}]"]
    line = _one_line(_run(args, tmp_path))
    assert f"holds a model.architecture={source} model, but this model is {target}" in line
    assert f"set model.architecture={source}" in line and "--allow-partial-load" in line
    # the explicit option goes on: the summary line says what loaded and the run finishes
    proc = _run(args + ["--allow-partial-load"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"checkpoint {ckpt}: " in proc.stdout and "keys loaded" in proc.stdout
    assert (tmp_path / "out" / "load_report.txt").read_text().count("missing:") > 0
