"""The fusion interface (models/fusion_interface.py): both fusions implement it, the registry is the one place that
names them (and the config schema and the trainer's engines agree with their registries), the :class:`Tokens` type
moves rows of both parts alike, and no code outside the fusion implementations branches on the architecture."""
from __future__ import annotations

import ast
import inspect
import re

import pytest
import torch

from models.fusion_interface import Fusion
from models.fusions import FUSIONS, build_fusion
from models.tokens import Tokens
from tests.conftest import ROOT
from utils.config import ConfigError, load_config
from utils.config_schema import RULES

FIBER_TINY = ROOT / "configs" / "models" / "fiber_tiny.yaml"
TINY = ROOT / "configs" / "models" / "tiny.yaml"
#: the modules allowed to know the architectures: the implementations and the registry
FUSION_MODULES = {"models/fusion.py", "models/fiber.py", "models/fusions.py", "models/fusion_interface.py"}


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_every_fusion_implements_the_whole_interface(name: str) -> None:
    cls = FUSIONS[name]
    assert issubclass(cls, Fusion) and not inspect.isabstract(cls)
    assert isinstance(cls.CROSS_ATTENTION_KEYS, str) and re.compile(cls.CROSS_ATTENTION_KEYS)


def test_the_config_schema_offers_the_registered_fusions() -> None:
    assert set(RULES["model.architecture"].choices) == set(FUSIONS)
    with pytest.raises(ConfigError, match="model.architecture"):
        load_config(TINY, ["model.architecture=fibre"])


def test_the_trainer_engines_are_the_schema_choices() -> None:
    from utils.engine import TrainEngine
    from utils.trainer import ENGINES
    assert set(RULES["train.engine"].choices) == set(ENGINES)
    assert all(issubclass(e, TrainEngine) and not inspect.isabstract(e) for e in ENGINES.values())


def test_build_fusion_names_the_known_ones() -> None:
    cfg = load_config(TINY)["model"]
    with pytest.raises(ValueError, match="one of x2vlm, fiber, got 'other'"):
        build_fusion({**cfg, "architecture": "other"}, None)


def test_fiber_refuses_tokens_without_a_backbone_state() -> None:
    from models.x2vlm import X2VLM
    torch.manual_seed(0)
    model = X2VLM.from_config(load_config(FIBER_TINY)).eval()
    image = Tokens(torch.zeros(1, 65, 64))  # an X²-VLM-style token set: no state
    text = Tokens(torch.zeros(1, 4, 64))
    with pytest.raises(ValueError, match="backbone states"):
        model.fuse(image, None, text, None)


def test_tokens_move_both_parts_alike() -> None:
    final, state = torch.arange(24.0).view(4, 3, 2), -torch.arange(24.0).view(4, 3, 2)
    tokens = Tokens(final, state)
    picked = tokens[torch.tensor([2, 0])]
    assert torch.equal(picked.final, final[[2, 0]]) and torch.equal(picked.state, state[[2, 0]])
    assert torch.equal(tokens.index_select(0, torch.tensor([1])).state, state[1:2])
    assert torch.equal(tokens.repeat_interleave(2).final, final.repeat_interleave(2, dim=0))
    both = Tokens.cat([tokens, picked])
    assert both.shape == (6, 3, 2) and len(both) == 6 and torch.equal(both.state[4:], state[[2, 0]])
    zeros = tokens.new_zeros(5)
    zeros[torch.tensor([4, 1])] = picked
    assert torch.equal(zeros.final[4], final[2]) and torch.equal(zeros.state[1], state[0])
    assert float(zeros.final[0].abs().sum()) == 0.0
    assert Tokens(final).map(lambda t: t * 2).state is None
    with pytest.raises(ValueError, match="with and without"):
        Tokens.cat([tokens, Tokens(final)])
    with pytest.raises(ValueError, match="without a backbone state"):
        zeros[0] = Tokens(final[:1])


def architecture_branches(paths: list, root) -> list[str]:
    """``model.architecture`` tests, ``.fiber`` flags and isinstance checks of a fusion class in ``paths``."""
    found = []
    names = {cls.__name__ for cls in FUSIONS.values()} | {"FusionEncoder"}
    for path in paths:
        rel = str(path.relative_to(root))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in FUSIONS
                                                     for c in [node.left, *node.comparators]):
                found.append(f"{rel}:{node.lineno} compares with an architecture name")
            if isinstance(node, ast.Attribute) and node.attr == "fiber" and isinstance(node.ctx, ast.Load):
                found.append(f"{rel}:{node.lineno} reads .fiber")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"
                    and any(isinstance(a, ast.Name) and a.id in names for a in ast.walk(node.args[1]))):
                found.append(f"{rel}:{node.lineno} isinstance of a fusion class")
    return found


def test_no_architecture_branch_outside_the_fusion_implementations() -> None:
    paths = [p for package in ("models", "utils", "dataset") for p in sorted((ROOT / package).rglob("*.py"))]
    paths += sorted(ROOT.glob("*.py"))
    found = architecture_branches([p for p in paths if str(p.relative_to(ROOT)) not in FUSION_MODULES], ROOT)
    assert not found, "\n".join(found)


def test_the_branch_check_finds_branches(tmp_path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f(model, m):\n    if model.cfg['architecture'] == 'fiber':\n        return model.fiber\n"
                     "    return isinstance(m, FiberFusion)\n", encoding="utf-8")
    found = architecture_branches([probe], tmp_path)
    assert sorted(f.split(" ", 1)[0] for f in found) == ["probe.py:2", "probe.py:3", "probe.py:4"]
