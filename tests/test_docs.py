"""The user documentation stays true: links resolve, documented commands parse, the API example's methods exist,
the architecture diagram renders."""
from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
from PIL import Image

from models.api import X2VLMInference
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _load(script: str):
    name = "docs_" + Path(script).stem
    spec = importlib.util.spec_from_file_location(name, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)", page.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def _commands(text: str, script: str) -> list[list[str]]:
    """Arguments of every ``python <script> ...`` command in fenced code blocks (backslash continuations joined)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(f"python {script} "):
                out.append(shlex.split(line)[2:])
    return out


def _parser(script: str, monkeypatch) -> argparse.ArgumentParser:
    module = _load(script)

    class Got(Exception):
        pass

    holder = {}

    def capture(self, args=None, namespace=None):
        holder["parser"] = self
        raise Got

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Got):
        module.main([])
    monkeypatch.undo()
    return holder["parser"]


@pytest.mark.parametrize("script", ["scripts/convert_datasets.py", "scripts/json_to_wds.py"])
def test_data_preparation_commands_parse(script: str, monkeypatch) -> None:
    text = (ROOT / "docs" / "data_preparation.md").read_text(encoding="utf-8")
    commands = _commands(text, script)
    assert commands, f"no {script} command in docs/data_preparation.md"
    parser = _parser(script, monkeypatch)
    for args in commands:
        parser.parse_args(args)  # argparse exits (SystemExit) on an unknown option or a missing argument


def test_every_converter_is_documented() -> None:
    source = (ROOT / "scripts" / "convert_datasets.py").read_text(encoding="utf-8")
    text = (ROOT / "docs" / "data_preparation.md").read_text(encoding="utf-8")
    subcommands = re.findall(r'sub\.add_parser\("([\w-]+)"', source)
    assert len(subcommands) >= 7
    for name in subcommands:
        assert f"convert_datasets.py {name} " in text, f"docs/data_preparation.md lacks the {name} command"


def test_readme_api_example_uses_existing_methods() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python API"):readme.index("## Official checkpoints")]
    called = set(re.findall(r"\b(?:vlm|vqa)\.(\w+)\(", section))
    assert {"similarity", "itm_score", "ground", "caption", "answer", "image_features", "text_features"} <= called
    for name in called:
        assert hasattr(X2VLMInference, name), f"README calls vlm.{name}, which the API lacks"


def test_two_commands_name_existing_files() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Two commands"):readme.index("## Install")]
    for path in ("scripts/setup_env.sh", "scripts/test.sh", "configs/pretrain/demo.yaml", "run.py"):
        assert path in section and (ROOT / path).exists()


def test_architecture_diagram_renders(tmp_path: Path) -> None:
    module = _load("scripts/draw_architecture.py")
    out = module.draw(tmp_path / "arch.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (1600, 900)
    with Image.open(ROOT / "docs" / "architecture.png") as committed:
        assert committed.size == (1600, 900)
