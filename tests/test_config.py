import json

import pytest
import torch

from foresight_engine.config import PRESETS, ModelConfig, preset
from foresight_engine.errors import ConfigError
from foresight_engine.models.qwen_vl import SpecialTokenIds, build_qwen_vl


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_roundtrip(name):
    cfg = preset(name)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["name"] == name


def test_validation_names_the_value():
    cfg = preset("tiny")
    data = json.loads(cfg.to_json())
    data["text"]["mrope_section"] = [4, 4, 4]
    with pytest.raises(ConfigError, match=r"mrope_section=\[4, 4, 4\]"):
        ModelConfig.from_dict(data)
    data = json.loads(cfg.to_json())
    data["adapter"]["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        ModelConfig.from_dict(data)
    data = json.loads(cfg.to_json())
    data["transformer"]["in_channels"] = 16
    with pytest.raises(ConfigError, match="latent_channels=8"):
        ModelConfig.from_dict(data)


def test_full_preset_builds_on_meta_device():
    """The real Qwen2.5-VL-7B and LTX-Video 2B configs, without weights or memory."""
    from diffusers import LTXVideoTransformer3DModel
    from foresight_engine.models.video_decoder import transformer_kwargs
    cfg = preset("full")
    ids = SpecialTokenIds(image=151655, video=151656, vision_start=151652, vision_end=151653, eos=151645, pad=151643)
    with torch.device("meta"):
        qwen = build_qwen_vl(cfg, ids)
        ltx = LTXVideoTransformer3DModel(**transformer_kwargs(cfg.transformer))
    n_qwen = sum(p.numel() for p in qwen.parameters())
    n_ltx = sum(p.numel() for p in ltx.parameters())
    assert 8.0e9 < n_qwen < 8.5e9  # Qwen2.5-VL-7B: 8.29B with the vision tower
    assert 1.8e9 < n_ltx < 2.1e9  # LTX-Video "2B": 1.92B
    assert cfg.spatial_step == 32 and cfg.temporal_step == 8
