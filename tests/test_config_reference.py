"""docs/configuration.md is generated from configs/defaults.yaml (scripts/config_reference.py) and kept fresh."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from utils.config import load_defaults

spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
ref = importlib.util.module_from_spec(spec)
sys.modules["config_reference"] = ref  # dataclasses look their module up there
spec.loader.exec_module(ref)


def _dotted(tree: dict, prefix: str = "") -> list[str]:
    return [k for key, v in tree.items()
            for k in [prefix + key, *(_dotted(v, prefix + key + ".") if isinstance(v, dict) and v else [])]]


def test_committed_reference_is_current() -> None:
    page = ref.generate()
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == page, "docs/configuration.md is stale: run `python scripts/config_reference.py` and commit it"


def test_every_key_is_listed_with_its_default() -> None:
    page = ref.generate()
    for key in _dotted(load_defaults()):
        assert f"`{key}`" in page, f"{key} missing from the reference"
    assert "| `train.precision` | `fp32` |" in page
    assert "| `optimizer.betas` | `[0.9, 0.999]` |" in page


def test_parser_reads_continuations_sections_and_quotes(tmp_path: Path) -> None:
    f = tmp_path / "defaults.yaml"
    f.write_text("# Intro line one.\n# Intro line two.\n\n"
                 "top: 1      # a number\n"
                 "sec:        # a section\n"
                 "  name: 'a # b'   # quoted hash kept in the value\n"
                 "  inner:    # nested\n"
                 "    flag: true   # first half\n"
                 "                 # second half\n"
                 "  free: {}   # any sub-keys\n"
                 "  items: [1, 2]  # a list\n")
    header, entries = ref.parse_defaults(f)
    assert header == "Intro line one. Intro line two."
    by = {e.name: e for e in entries}
    assert list(by) == ["top", "sec", "sec.name", "sec.inner", "sec.inner.flag", "sec.free", "sec.items"]
    assert by["sec.name"].default == "a # b" and by["sec.name"].meaning == "quoted hash kept in the value"
    assert by["sec.inner.flag"].meaning == "first half second half"
    assert by["sec.inner"].section and not by["sec.free"].section and by["sec.items"].default == [1, 2]
    page = ref.render(header, entries)
    assert "| `sec.inner.flag` | `true` | first half second half |" in page


def test_a_key_without_comment_is_named(tmp_path: Path) -> None:
    f = tmp_path / "defaults.yaml"
    f.write_text("a: 1  # fine\nsec:  # s\n  silent: 2\n")
    with pytest.raises(ValueError, match=r"'sec.silent' has no comment.*config_reference.py"):
        ref.generate(f)


def test_check_mode_reports_stale_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "configuration.md"
    assert ref.main(["--out", str(out), "--check"]) == 1
    assert "run python scripts/config_reference.py" in capsys.readouterr().err
    assert ref.main(["--out", str(out)]) == 0
    assert ref.main(["--out", str(out), "--check"]) == 0
