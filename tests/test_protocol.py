"""The protocol table: names, directions and kinds agree with pyiqa's own registry."""

from __future__ import annotations

import pytest

from fidesr.protocol import PROTOCOL, canonical_name, get_spec, monitor_mode


def test_protocol_has_the_nine_metrics() -> None:
    assert list(PROTOCOL) == ["psnr", "ssim", "lpips", "dists", "fid", "niqe", "musiq", "maniqa", "clipiqa"]
    assert PROTOCOL["maniqa"].pyiqa_name == "maniqa-pipal"  # not pyiqa's default `maniqa`
    assert dict(PROTOCOL["psnr"].options) == {
        "test_y_channel": True,
        "color_space": "ycbcr",
        "crop_border": 0,
    }


@pytest.mark.parametrize("name", list(PROTOCOL))
def test_direction_and_kind_match_pyiqa(name: str) -> None:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    spec, cfg = PROTOCOL[name], DEFAULT_CONFIGS[PROTOCOL[name].pyiqa_name]
    assert spec.lower_better == cfg.get("lower_better", False)
    expected = {"FR": "full-reference", "NR": "no-reference"}[cfg["metric_mode"]]
    assert spec.kind == ("distribution" if name == "fid" else expected)


def test_monitor_mode_accepts_names_and_log_keys() -> None:
    assert monitor_mode("psnr") == "max"
    assert monitor_mode("val/realsr/lpips") == "min"
    assert monitor_mode("val/div2k/niqe") == "min"
    assert monitor_mode("maniqa-pipal") == "max"
    assert monitor_mode("fid-standin") == "min"
    with pytest.raises(KeyError, match="known: psnr"):
        monitor_mode("val/realsr/loss")


def test_aliases() -> None:
    assert canonical_name("MANIQA-PIPAL") == "maniqa"
    assert canonical_name("lpips-standin") == "lpips-standin"
    assert get_spec("clip-iqa").name == "clipiqa"


def test_every_weight_key_a_metric_names_is_registered() -> None:
    """A typo in a spec's weight keys would otherwise surface as a KeyError in a user's run."""
    from fidesr.protocol import PROTOCOL
    from fidesr.weights.registry import FILES

    unknown = {name: [k for k in spec.weights if k not in FILES] for name, spec in PROTOCOL.items()}
    assert not any(unknown.values()), unknown


def test_protocol_options_are_one_object_for_training_and_eval(compose):
    """conf/protocol/default.yaml builds the same ProtocolOptions for the validation callback and
    fidesr-eval; its defaults are the protocol's, and bad values are refused naming the key."""
    import pytest
    from hydra.utils import instantiate

    from fidesr.protocol import ProtocolOptions

    train = compose(["experiment=demo"])
    built = instantiate(train.protocol)
    assert built == ProtocolOptions() and train.callbacks.validation_metrics.protocol == train.protocol
    evaluated = compose(["protocol.crop_border=4", "output_dir=/tmp/x"], config_name="eval")
    assert instantiate(evaluated.protocol) == ProtocolOptions(crop_border=4)
    assert ProtocolOptions().describe() == "PSNR/SSIM on Y of ycbcr, crop_border 0"
    assert ProtocolOptions(test_y_channel=False).describe() == "PSNR/SSIM on RGB, crop_border 0"
    for bad, key in ((dict(crop_border=-1), "crop_border"), (dict(ssim_impl="fast"), "ssim_impl")):
        with pytest.raises(ValueError, match=f"protocol.{key}"):
            ProtocolOptions(**bad)
