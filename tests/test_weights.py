"""Real loading code, exercised on a tiny model saved with save_pretrained."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from foresight_engine import Engine
from foresight_engine.errors import WeightsError
from foresight_engine.models.glp import GLPModel
from foresight_engine.models.lora import fuse_lora

KW = dict(num_inference_steps=2, max_new_tokens=4, seed=2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, engine):
    return engine.model.save_pretrained(tmp_path_factory.mktemp("tiny_weights"))


def _load(root, **kw):
    return GLPModel.from_pretrained(root / "vlm", root / "decoder", root / "glue.safetensors",
                                    generation=kw.pop("generation", None), **kw)


def test_roundtrip_reproduces_the_preset(saved, engine, image):
    loaded = Engine(_load(saved, generation=engine.config.generation))
    want, got = engine.config, loaded.config
    for part in ("vision", "text", "adapter", "decoder", "generation", "spatial_encoder"):
        assert getattr(got, part) == getattr(want, part), part
    assert (got.processor.min_pixels, got.processor.max_pixels) == (want.processor.min_pixels, want.processor.max_pixels)
    a, b = engine.predict(image, "What happens next?", **KW), loaded.predict(image, "What happens next?", **KW)
    assert a.token_ids == b.token_ids
    assert torch.equal(a.world_latent, b.world_latent)
    assert np.array_equal(a.frames, b.frames)


def _copy_tree(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_partial_vlm_checkpoint_names_every_missing_tensor(saved, tmp_path):
    root = _copy_tree(saved, tmp_path / "w")
    f = root / "vlm" / "model.safetensors"
    tensors = load_file(f)
    dropped = sorted(k for k in tensors if k.startswith("model.layers.1."))  # hub layout
    assert dropped
    save_file({k: v for k, v in tensors.items() if k not in dropped}, f, metadata={"format": "pt"})
    with pytest.raises(WeightsError) as err:
        _load(root)
    for key in dropped:
        assert key.split("model.", 1)[-1] in str(err.value)


def test_partial_decoder_and_glue(saved, tmp_path):
    root = _copy_tree(saved, tmp_path / "w")
    f = root / "decoder" / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(f)
    save_file({k: v for k, v in tensors.items() if k != "proj_out.weight"}, f)
    with pytest.raises(WeightsError, match="proj_out.weight"):
        _load(root)

    root = _copy_tree(saved, tmp_path / "w2")
    glue = root / "glue.safetensors"
    from safetensors import safe_open
    with safe_open(str(glue), "pt") as h:
        meta = h.metadata()
    tensors = load_file(glue)
    missing = [k for k in tensors if k.startswith("adapter.blocks.1.")]
    save_file({k: v for k, v in tensors.items() if k not in missing}, glue, metadata=meta)
    with pytest.raises(WeightsError) as err:
        _load(root)
    assert all(k[len("adapter."):] in str(err.value) for k in missing)


def test_only_safetensors(saved, tmp_path):
    pickle_file = tmp_path / "glue.bin"
    torch.save({"query_tokens": torch.zeros(2)}, pickle_file)
    with pytest.raises(WeightsError, match="only .safetensors"):
        GLPModel.from_pretrained(saved / "vlm", saved / "decoder", pickle_file)
    with pytest.raises(WeightsError, match="no config.json"):
        GLPModel.from_pretrained(tmp_path, saved / "decoder", saved / "glue.safetensors")


def _peft_lora(transformer, tmp_path):
    """A LoRA made by peft itself (the format users bring), with non-zero B so it changes the weights."""
    import copy
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "proj_out"])
    peft_model = get_peft_model(copy.deepcopy(transformer), config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "lora")
    return peft_model, tmp_path / "lora"


def test_lora_fused_at_load_equals_peft(saved, tmp_path, engine):
    transformer = engine.model.video_decoder.transformer
    peft_model, lora_dir = _peft_lora(transformer, tmp_path)
    assert (lora_dir / "adapter_model.safetensors").is_file()
    model = _load(saved, lora=lora_dir)
    fused = model.video_decoder.transformer
    x = torch.randn(1, 48, 8)
    args = dict(encoder_hidden_states=torch.randn(1, 4, 64), timestep=torch.full((1, 48), 500.0),
                encoder_attention_mask=torch.ones(1, 4), num_frames=3, height=4, width=4, return_dict=False)
    with torch.no_grad():
        want = peft_model(hidden_states=x, **args)[0]
        got = fused(hidden_states=x, **args)[0]
        base = transformer(hidden_states=x, **args)[0]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, base, atol=1e-4)


def test_lora_targets_that_do_not_exist_are_named(tmp_path, engine):
    bad = {"transformer.transformer_blocks.9.attn1.to_q.lora_A.weight": torch.zeros(2, 32),
           "transformer.transformer_blocks.9.attn1.to_q.lora_B.weight": torch.zeros(32, 2)}
    save_file(bad, tmp_path / "lora.safetensors")
    import copy
    with pytest.raises(WeightsError, match=r"transformer_blocks\.9\.attn1\.to_q"):
        fuse_lora(copy.deepcopy(engine.model.video_decoder.transformer), tmp_path / "lora.safetensors")
