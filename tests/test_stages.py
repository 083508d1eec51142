"""StageSchedule: the stage of each step, its checks, and what the module does with it (PiSA-SR's stages)."""

from __future__ import annotations

import pytest

from fidesr.stages import Stage, StageSchedule


def _pisasr(first: int = 3) -> StageSchedule:
    return StageSchedule(
        [
            {"name": "pixel", "steps": first, "lora_sets": ["pix"], "perceptual": False, "distill": False},
            {"name": "semantic", "lora_sets": ["pix", "sem"], "trained": ["sem"]},
        ]
    )


def test_the_stage_of_each_step():
    schedule = _pisasr(3)
    names = [schedule.at(step).name for step in range(6)]
    assert names == ["pixel", "pixel", "pixel", "semantic", "semantic", "semantic"]
    assert schedule.at(10**6).name == "semantic"
    pixel, semantic = schedule.stages
    assert pixel.lora_sets == ("pix",) and pixel.trained is None and not pixel.perceptual
    assert semantic.trained == ("sem",) and semantic.perceptual and semantic.distill
    # A zero-step first stage is skipped; a finite last stage is kept past its end.
    assert _pisasr(0).at(0).name == "semantic"
    finite = StageSchedule([Stage("a", 2), Stage("b", 2)])
    assert [finite.at(s).name for s in range(6)] == ["a", "a", "b", "b", "b", "b"]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([], "at least one stage"),
        ([{"name": "a"}, {"name": "b"}], r"only the last stage may run to the end; \['a'\]"),
        ([{"name": "a", "steps": -1}], "steps must be a number >= 0"),
        ([{"name": "a", "lora_sets": ["pix"], "trained": ["sem"]}], "must be active ones"),
    ],
)
def test_malformed_schedules_are_refused(stages, message):
    with pytest.raises(ValueError, match=message):
        StageSchedule(stages)


def test_check_names_the_sets_the_backbone_lacks_and_daw_without_lpips():
    with pytest.raises(ValueError, match=r"stage 'pixel' names LoRA sets \['pix'\]"):
        _pisasr().check((), daw=False)
    with pytest.raises(ValueError, match="stage 'pixel' has no perceptual loss"):
        _pisasr().check(("pix", "sem"), daw=True)
    _pisasr().check(("pix", "sem"), daw=False)


def test_the_module_follows_the_stage(compose, tiny_backbone_folder):
    """The module activates and freezes the sets of each stage and switches the losses it names."""
    from hydra.utils import instantiate

    cfg = compose(
        [
            "experiment=[demo,pisasr_like]",
            "first_stage_steps=2",
            "backbone.ae_warmup_steps=10",
            "backbone.prior_steps=0",
            "backbone.vae_channels=[32,64,64]",
        ]
        + ["paths.output_dir=/tmp/x"]
    )
    model = instantiate(cfg.model)
    step = {"n": 0}
    type(model).global_step = property(lambda self: step["n"])
    try:
        model.on_train_batch_start(None, 0)
        assert model.stage.name == "pixel" and not model._acts("perceptual") and not model._acts("distill")
        active = set(model.backbone.unet.active_adapters())
        assert active and all(a.endswith("_pix") for a in active)
        step["n"] = 2
        model.on_train_batch_start(None, 0)
        assert model.stage.name == "semantic" and model._acts("perceptual") and model._acts("distill")
        grads = {
            n.split(".lora_")[1].split(".")[1][-3:]: p.requires_grad
            for n, p in model.backbone.unet.named_parameters()
            if "lora_" in n
        }
        assert grads == {"pix": False, "sem": True}  # the pixel set frozen, the semantic set trained
    finally:
        del type(model).global_step
