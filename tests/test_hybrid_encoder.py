"""The hybrid encoder: DINOv2 patch features of the conditioning image, fused with the world latent in the adapter,
computed beside vision + prefill. Its output is checked against transformers' `Dinov2Model` directly."""
import numpy as np
import pytest
import torch

from foresight_engine import Engine
from foresight_engine.errors import InvalidInputError, WeightsError
from foresight_engine.models.glp import GLPModel

PROMPT = "What happens next?"
KW = dict(num_inference_steps=2, max_new_tokens=3, seed=4)


@pytest.fixture(scope="module")
def hybrid(engine_of) -> Engine:
    return engine_of("tiny-hybrid")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, hybrid):
    return hybrid.model.save_pretrained(tmp_path_factory.mktemp("tiny_hybrid"))


def test_features_equal_dinov2_model_directly(hybrid, saved, image):
    """Transformers' own DINOv2, loaded from the saved folder with its own image processor, gives the engine's
    features: the patch tokens after the final norm (class token dropped)."""
    from PIL import Image
    from transformers import AutoImageProcessor, Dinov2Model
    reference = Dinov2Model.from_pretrained(saved / "spatial").eval()
    processor = AutoImageProcessor.from_pretrained(saved / "spatial")
    with torch.inference_mode():
        want = reference(**processor(images=Image.fromarray(image), return_tensors="pt")).last_hidden_state[:, 1:]
        got = hybrid.spatial(hybrid.prepare(image, PROMPT))
    c = hybrid.config.spatial_encoder
    assert got.shape == (1, c.num_patches, c.hidden_size) == want.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_adapter_reads_the_spatial_features(hybrid):
    c = hybrid.config
    world = torch.randn(1, c.adapter.num_query_tokens, c.text.hidden_size)
    features = torch.randn(1, c.spatial_encoder.num_patches, c.spatial_encoder.hidden_size)
    with torch.inference_mode():
        a, mask = hybrid.adapt(world, features)
        b, _ = hybrid.adapt(world, torch.zeros_like(features))
    assert a.shape == (1, c.adapter.num_tokens, c.decoder.conditioning_channels) and mask.all()
    assert not torch.allclose(a, b)  # the fusion reads the features
    with pytest.raises(InvalidInputError, match="spatial_features are given exactly when"):
        hybrid.model.adapter(world)


def test_spatial_branch_runs_beside_the_prefill_and_changes_nothing(hybrid, image):
    sequential = Engine(hybrid.model, overlap=False).predict(image, PROMPT, **KW)
    overlapped = hybrid.predict(image, PROMPT, **KW)
    assert overlapped.token_ids == sequential.token_ids and np.array_equal(overlapped.frames, sequential.frames)
    spans = overlapped.timings.spans
    assert spans["spatial"][0] < spans["prefill"][1]  # DINOv2 started before the prefill ended (concurrently)
    assert spans["spatial"][1] <= spans["adapter"][0]  # ... and the adapter waited for it
    start = sequential.timings.spans
    assert start["prefill"][1] <= start["spatial"][0]  # sequential: one stage after the other


def test_folder_roundtrip_with_the_dinov2_folder(saved, hybrid, image):
    model = GLPModel.from_pretrained(saved / "vlm", saved / "decoder", saved / "glue.safetensors",
                                     spatial=saved / "spatial", generation=hybrid.config.generation)
    assert model.config.spatial_encoder == hybrid.config.spatial_encoder
    a, b = hybrid.predict(image, PROMPT, **KW), Engine(model).predict(image, PROMPT, **KW)
    assert a.token_ids == b.token_ids and np.array_equal(a.frames, b.frames)
    with pytest.raises(WeightsError, match="fuses DINOv2 features .* spatial=None"):
        GLPModel.from_pretrained(saved / "vlm", saved / "decoder", saved / "glue.safetensors")
    with pytest.raises(WeightsError, match="not a DINOv2 folder"):
        GLPModel.from_pretrained(saved / "vlm", saved / "decoder", saved / "glue.safetensors", spatial=saved / "vlm")
