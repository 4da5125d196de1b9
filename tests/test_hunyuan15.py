"""HunyuanVideo-1.5, the second decoder family, beyond the shared reference and runtime tests: its fixed-shape step
against diffusers' forward, its geometry and request checks, its folder (+ LoRA) loading, the registry."""
import copy

import numpy as np
import pytest
import torch

from foresight_engine import Engine
from foresight_engine.config import DECODER_FAMILIES
from foresight_engine.errors import ConfigError, InvalidInputError, WeightsError
from foresight_engine.models.export_spec import BuildShape, export_specs
from foresight_engine.models.families import FAMILIES, family, family_of_folder
from foresight_engine.models.glp import GLPModel

PROMPT = "What happens next?"
KW = dict(num_inference_steps=2, max_new_tokens=3, seed=4)


@pytest.fixture(scope="module")
def hunyuan(engine_of) -> Engine:
    return engine_of("tiny-hunyuan15")


def test_the_registry_names_every_config_family():
    assert tuple(FAMILIES) == DECODER_FAMILIES
    assert {family(name).name for name in FAMILIES} == set(FAMILIES)
    with pytest.raises(ConfigError, match="unknown decoder family 'sora'"):
        family("sora")


def test_fixed_shape_step_equals_diffusers_forward(hunyuan):
    """The built/static step (no token regrouping, no host read) equals diffusers' own forward, per batch row, with
    different timesteps per row and padded conditioning tokens (masked, zeroed: they must not leak in)."""
    decoder, config = hunyuan.model.video_decoder, hunyuan.config
    shape = BuildShape.for_config(config)
    geometry = shape.geometry(config)
    latents, cond, mask, _, image_condition = export_specs(config)["denoise"].sample_inputs(
        BuildShape(**{**shape.to_dict(), "guidance": True}))
    mask[1, -5:] = 0  # the second row's last tokens are padding
    cond[1, -5:] = 1e4  # ... holding values that would dominate if they were read
    timestep = torch.tensor([700.0, 250.0])
    with torch.inference_mode():
        ours = decoder(latents, cond, mask, timestep, image_condition, geometry)
        reference = decoder.diffusers_step(latents, cond, mask, timestep, image_condition, geometry)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert ours.shape == latents.shape and not torch.allclose(ours[0], ours[1])


def test_geometry_and_request_checks(hunyuan, image):
    g = hunyuan.prepare(image, PROMPT).geometry
    assert (g.grid.frames, g.grid.height, g.grid.width, g.grid.channels) == (3, 8, 8, 4)  # 4x temporal, 8x spatial
    assert g.pinned == 0 and g.rope_scale == (1.0, 1.0, 1.0)  # every frame denoised; no RoPE interpolation
    with pytest.raises(InvalidInputError, match=r"num_frames=11 must be of the form 4\*k\+1"):
        hunyuan.prepare(image, PROMPT, num_frames=11)
    with pytest.raises(InvalidInputError, match="height=60 must be a positive multiple of 8"):
        hunyuan.prepare(image, PROMPT, height=60)


def test_reference_pipeline_refuses_a_size_it_would_not_keep(hunyuan, image):
    """diffusers' pipeline picks its own size from resolution buckets: a comparison at another size is refused."""
    from PIL import Image
    pipe = family(hunyuan.config).reference_pipeline(hunyuan.model)
    cond, mask = torch.zeros(1, 16, 64), torch.ones(1, 16, dtype=torch.long)
    with pytest.raises(ConfigError, match="turns a 64x128 image into"):
        pipe(Image.fromarray(image), cond, mask, height=64, width=128, num_frames=5, num_inference_steps=1,
             guidance_scale=1.0, frame_rate=24, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, hunyuan):
    return hunyuan.model.save_pretrained(tmp_path_factory.mktemp("tiny_hunyuan15"))


def _load(root, **kw):
    return GLPModel.from_pretrained(root / "vlm", root / "decoder", root / "glue.safetensors", **kw)


def test_folder_roundtrip_detects_the_family_and_reproduces_the_preset(saved, hunyuan, image):
    assert family_of_folder(saved / "decoder").name == "hunyuan15"
    loaded = Engine(_load(saved, generation=hunyuan.config.generation))
    assert loaded.config.decoder == hunyuan.config.decoder
    a, b = hunyuan.predict(image, PROMPT, **KW), loaded.predict(image, PROMPT, **KW)
    assert a.token_ids == b.token_ids and np.array_equal(a.frames, b.frames)
    # loaded weights take the full size's generation settings by default (480p, 121 frames, 8 steps)
    assert _load(saved).config.generation.width == 848


def test_lora_fused_at_load_equals_peft(saved, hunyuan, tmp_path):
    from peft import LoraConfig, get_peft_model
    transformer = hunyuan.model.video_decoder.transformer
    peft_model = get_peft_model(copy.deepcopy(transformer),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "add_k_proj", "proj_out"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "lora")
    fused = _load(saved, lora=tmp_path / "lora").video_decoder.transformer
    x = torch.randn(1, 9, 3, 8, 8)
    args = dict(timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 4, 64),
                encoder_attention_mask=torch.ones(1, 4), encoder_hidden_states_2=torch.zeros(1, 1, 8),
                encoder_attention_mask_2=torch.zeros(1, 1), image_embeds=torch.zeros(1, 1, 8), return_dict=False)
    with torch.no_grad():
        want, got, base = (m(hidden_states=x, **args)[0] for m in (peft_model, fused, transformer))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, base, atol=1e-4)


def test_a_folder_of_no_known_family_is_named(saved, tmp_path):
    import json
    import shutil
    root = tmp_path / "w"
    shutil.copytree(saved / "decoder", root)
    config = json.loads((root / "transformer" / "config.json").read_text())
    (root / "transformer" / "config.json").write_text(json.dumps({**config, "_class_name": "WanTransformer3DModel"}))
    with pytest.raises(WeightsError, match="'WanTransformer3DModel' is none of the decoder families'"):
        family_of_folder(root)
