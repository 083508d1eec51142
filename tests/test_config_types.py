"""fidesr.config_types: override values checked against their target's annotations, keys named."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from fidesr.config_types import check_config_types
from fidesr.errors import ConfigValueError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_steps=abc", "trainer.max_steps = 'abc': expected int"),
        ("trainer.gradient_clip_val=big", "trainer.gradient_clip_val = 'big': expected"),
        ("lrrb.res_scale=abc", "lrrb.res_scale = 'abc': expected float"),
        ("lrrb.num_blocks=2.5", "lrrb.num_blocks = 2.5: expected int"),
        ("trainer.precision=17", "trainer.precision = 17: expected"),
    ],
)
def test_a_wrong_type_names_the_key_and_the_type(compose, override: str, message: str) -> None:
    cfg = OmegaConf.to_container(compose(["experiment=demo", override]), resolve=True)
    with pytest.raises(ConfigValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_config_types(cfg)


@pytest.mark.parametrize(
    "experiment", ["demo", "fidesr_sd21", "osediff_like", "pisasr_like", "ablation_daw_lrrb"]
)
def test_every_shipped_experiment_passes(compose, experiment: str) -> None:
    check_config_types(OmegaConf.to_container(compose([f"experiment={experiment}"]), resolve=True))


def test_ints_are_floats_and_unknown_types_are_left_alone() -> None:
    check_config_types({"_target_": "fidesr.components.lrrb.LatentResidualRefinementBlock", "res_scale": 1})
    check_config_types({"_target_": "no.such.module.Thing", "x": "anything"})
    check_config_types({"_target_": "lightning.pytorch.Trainer", "devices": "auto", "max_steps": -1})
