"""The distillation-term interface: what the module may rely on, and that the module names no method."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from fidesr.components.distill import (
    ClassifierScoreDistillation,
    DistillationTerm,
    VariationalScoreDistillation,
)

SRC = Path(__file__).resolve().parents[3] / "src" / "fidesr"


def test_the_terms_implement_the_interface():
    for term in (ClassifierScoreDistillation(), VariationalScoreDistillation()):
        assert isinstance(term, DistillationTerm) and term.name in ("csd", "vsd")
        assert type(term).training_loss is not DistillationTerm.training_loss
    assert ClassifierScoreDistillation().state_key is None
    assert VariationalScoreDistillation().state_key == "fidesr_fake_score"
    with pytest.raises(NotImplementedError, match="must implement training_loss"):
        DistillationTerm().training_loss(torch.zeros(1, 4, 2, 2), None, [""])


def test_vsd_needs_attach_before_its_optimiser():
    with pytest.raises(RuntimeError, match=r"attach\(backbone\) was not called"):
        VariationalScoreDistillation().checkpoint_state()


def test_csd_training_loss_is_its_forward_with_the_backbones_teacher(make_tiny_backbone):
    """training_loss encodes the tags and the negative prompt and calls the term on the teacher."""
    backbone = make_tiny_backbone()
    term = ClassifierScoreDistillation(t_min=20, t_max=500)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, backbone.latent_channels, 8, 8, generator=g, requires_grad=True)
    w = torch.rand(2, 1, 64, 64, generator=g)
    out = term.training_loss(
        z, backbone, ["a", "b"], weight_map=w, generator=torch.Generator().manual_seed(3)
    )
    pos = backbone.encode_prompt(["a", "b"])
    neg = backbone.encode_prompt([term.negative_prompt] * 2)
    from fidesr.components.daw import resize_weights

    ref = term(
        z.float(),
        backbone.teacher_eps,
        pos,
        neg,
        backbone.alphas_cumprod,
        weight_map=resize_weights(w, (8, 8)),
        generator=torch.Generator().manual_seed(3),
    )
    torch.testing.assert_close(out.loss, ref, rtol=0, atol=0)
    assert out.logs == {}


def _names(path: Path) -> set[str]:
    """Every identifier, attribute and string constant of a module's code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in docstrings:
            continue
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.alias):
            found.add(node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(node.value.replace(".", " ").replace("=", " ").split())
    return found


@pytest.mark.parametrize("module", ["model.py", "generator.py"])
def test_the_module_and_the_generator_name_no_compared_method(module):
    """Method specifics live in their parts (components/distill, stages, backbone/adapters)."""
    names = {n.lower() for n in _names(SRC / module)}
    banned = {"csd", "vsd", "pix", "sem", "pix_steps", "lora_strengths", "fake_score", "osediff", "pisasr"}
    banned |= {"lambda_csd", "lambda_vsd", "lambda_pix", "lambda_sem", "fake_score_step", "pix_stage"}
    assert not {n for n in names if n in banned or "fake" in n or "pisa" in n or "osediff" in n}
