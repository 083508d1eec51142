"""WeightEMA: the average by hand over real training steps, the raw run unchanged, exact resume, and the
readers using the average."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fidesr.callbacks.ema import WeightEMA
from fidesr.cli.train import train
from fidesr.modelio import TrainedWeights


def _over(fast: list[str], run: Path, steps: int, *extra: str) -> list[str]:
    return [
        *fast,
        "validate_before_fit=false",
        "callbacks.validation_images=null",
        "logger=csv",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=1",
        f"paths.output_dir={run}",
        *extra,
    ]


def _ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_decay_schedule_and_bounds():
    ema = WeightEMA(decay=0.999)
    assert [round(ema.decay_at(n), 6) for n in (0, 1, 10)] == [0.1, round(2 / 11, 6), 0.55]
    assert ema.decay_at(10**6) == 0.999 and WeightEMA(0.9, warmup=False).decay_at(0) == 0.9
    with pytest.raises(ValueError, match="ema.decay must be in"):
        WeightEMA(decay=1.0)


@pytest.mark.slow
def test_the_average_by_hand_the_raw_run_unchanged_and_an_exact_resume(
    compose, fast_train_overrides, tmp_path
):
    on = ("ema=on", "callbacks.ema.decay=0.5")
    runs = {}
    for name, steps, extra in (("w1", 1, ()), ("w2", 2, ()), ("ema2", 2, on)):
        runs[name] = tmp_path / name
        train(compose(_over(fast_train_overrides, runs[name], steps, *extra)))
    w1, w2 = _ckpt(runs["w1"])["state_dict"], _ckpt(runs["w2"])["state_dict"]
    ckpt = _ckpt(runs["ema2"])
    # The training is the same run, bit for bit, with the average kept beside it.
    assert ckpt["state_dict"].keys() == w2.keys()
    assert all(torch.equal(ckpt["state_dict"][k], w2[k]) for k in w2)
    stored = ckpt["fidesr_ema"]
    assert stored["updates"] == 2 and stored["decay"] == 0.5
    # By hand: s0 = w0 (the initial weights), s1 = d0 s0 + (1 - d0) w1, s2 = d1 s1 + (1 - d1) w2.
    import lightning as L
    from hydra.utils import instantiate

    cfg = compose(_over(fast_train_overrides, tmp_path / "x", 1))
    L.seed_everything(cfg.seed, workers=True)
    w0 = dict(instantiate(cfg.model).named_parameters())
    d0, d1 = min(0.5, 1 / 10), min(0.5, 2 / 11)
    assert stored["state_dict"]
    for k, s in stored["state_dict"].items():
        s1 = torch.lerp(w0[k].detach().float(), w1[k].float(), 1 - d0)
        torch.testing.assert_close(s, torch.lerp(s1, w2[k].float(), 1 - d1), rtol=1e-6, atol=1e-7, msg=k)
    assert any(not torch.equal(stored["state_dict"][k], w2[k]) for k in stored["state_dict"])
    # Resume: 1 step + 1 resumed step gives the same average as 2 steps.
    part = tmp_path / "part"
    train(compose(_over(fast_train_overrides, part, 1, *on)))
    train(compose(_over(fast_train_overrides, part, 2, *on, "ckpt_path=last")))
    again = _ckpt(part)["fidesr_ema"]
    assert again["updates"] == 2
    for k, v in stored["state_dict"].items():
        torch.testing.assert_close(again["state_dict"][k], v, rtol=0, atol=0, msg=k)
    # The readers use the average: upscale, export and eval all load through TrainedWeights.
    weights = TrainedWeights.load(runs["ema2"] / "checkpoints" / "last.ckpt")
    assert weights.info["ema"] is True
    lora = next(k for k in stored["state_dict"] if "lora_" in k)
    torch.testing.assert_close(weights.state[lora[len("backbone.") :]], stored["state_dict"][lora])
    raw = TrainedWeights.load(runs["w2"] / "checkpoints" / "last.ckpt")
    assert raw.info["ema"] is False and torch.equal(raw.state[lora[len("backbone.") :]], w2[lora])
