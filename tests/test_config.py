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
    data["decoder"]["transformer"]["in_channels"] = 16
    with pytest.raises(ConfigError, match="latent_channels=8"):
        ModelConfig.from_dict(data)


@pytest.mark.parametrize("name,decoder_params", [("full", (1.8e9, 2.1e9)),  # LTX-Video "2B": 1.92B
                                                 ("full-hunyuan15", (8.2e9, 8.4e9))])  # HunyuanVideo-1.5: 8.3B
def test_full_presets_build_on_meta_device(name, decoder_params):
    """The real Qwen2.5-VL-7B and video decoder configs, without weights or memory."""
    from foresight_engine.models.families import family
    cfg = preset(name)
    ids = SpecialTokenIds(image=151655, video=151656, vision_start=151652, vision_end=151653, eos=151645, pad=151643)
    with torch.device("meta"):
        qwen = build_qwen_vl(cfg, ids)
        video_decoder, _ = family(cfg).build(cfg)
    n_qwen = sum(p.numel() for p in qwen.parameters())
    n_decoder = sum(p.numel() for p in video_decoder.parameters())
    assert 8.0e9 < n_qwen < 8.5e9  # Qwen2.5-VL-7B: 8.29B with the vision tower
    assert decoder_params[0] < n_decoder < decoder_params[1]
    assert (cfg.spatial_step, cfg.temporal_step) == ((32, 8) if name == "full" else (16, 4))


def test_full_hybrid_preset_adds_dinov2_vit_large():
    from foresight_engine.models.spatial_encoder import SpatialEncoder
    cfg = preset("full-hybrid")
    assert preset("full").spatial_encoder is None  # off by default
    with torch.device("meta"):
        dinov2 = SpatialEncoder.build(cfg.spatial_encoder)
    assert 3.0e8 < sum(p.numel() for p in dinov2.parameters()) < 3.1e8  # DINOv2 ViT-L/14: 304M
    assert cfg.spatial_encoder.num_patches == 256  # 224 / 14 = 16 patches a side


def test_decoder_section_is_picked_by_its_family_and_the_hybrid_section_may_be_null():
    data = json.loads(preset("tiny-hunyuan15").to_json())
    assert data["decoder"]["family"] == "hunyuan15" and data["spatial_encoder"] is None
    assert type(ModelConfig.from_dict(data).decoder).__name__ == "Hunyuan15DecoderConfig"
    data["decoder"]["family"] = "sora"
    with pytest.raises(ConfigError, match=r"config.decoder.family='sora': choose one of \['hunyuan15', 'ltx'\]"):
        ModelConfig.from_dict(data)
    data = json.loads(preset("tiny").to_json())
    data["decoder"]["family"] = "hunyuan15"  # LTX fields under the Hunyuan family: refused by name
    with pytest.raises(ConfigError, match="unknown field"):
        ModelConfig.from_dict(data)
    bad = json.loads(preset("tiny-hunyuan15").to_json())
    bad["decoder"]["transformer"]["rope_axes_dim"] = [4, 4, 4]
    with pytest.raises(ConfigError, match=r"rope_axes_dim=\[4, 4, 4\]"):
        ModelConfig.from_dict(bad)
