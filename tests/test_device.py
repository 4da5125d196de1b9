"""The engine's device: `cpu` gives today's results, `cuda` without CUDA fails at once naming CUDA (API and CLIs),
a CUDA graph over CPU tensors is refused, and the serving layers pass the device through."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from foresight_engine import Engine
from foresight_engine.cli import main
from foresight_engine.device import resolve_device
from foresight_engine.engine.graphs import GraphedDenoiser
from foresight_engine.engine.streams import BranchStreams
from foresight_engine.errors import ConfigError, DeviceUnavailable, GraphCaptureError
from foresight_engine.models.glp import GLPModel
from foresight_engine.serve import EngineSource

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(num_inference_steps=2, max_new_tokens=6, seed=3)
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def test_device_cpu_gives_the_eager_reference_tokens_and_frames(engine, image):
    on_cpu = Engine(engine.model, device="cpu")
    assert on_cpu.device == torch.device("cpu") and engine.device == torch.device("cpu")  # None: the model's
    reference = Engine(engine.model, static=False, overlap=False)
    got, want = on_cpu.predict(image, "What happens next?", **SETTINGS), reference.predict(image, "What happens next?",
                                                                                          **SETTINGS)
    assert got.token_ids == want.token_ids
    assert np.abs(got.frames.astype(int) - want.frames.astype(int)).max() <= 1
    torch.testing.assert_close(got.video_latent, want.video_latent, rtol=1e-5, atol=1e-5)


def test_cli_device_cpu_gives_the_api_tokens(engine, tmp_path):
    from PIL import Image
    image = np.asarray(Image.open(ROOT / "assets" / "example.png").convert("RGB"))
    assert main(["predict", "--preset", "tiny", "--device", "cpu", "--image", str(ROOT / "assets" / "example.png"),
                 "--prompt", "What happens next?", "--out", str(tmp_path), "--steps", "2", "--max-new-tokens", "6",
                 "--seed", "3"]) == 0
    summary = json.loads((tmp_path / "prediction.json").read_text())
    assert summary["token_ids"] == engine.predict(image, "What happens next?", **SETTINGS).token_ids


def test_device_strings_are_checked():
    assert resolve_device(None) == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match="'meta'"):
        resolve_device("meta")


@no_cuda
def test_cuda_without_cuda_fails_at_once_naming_cuda(monkeypatch, tmp_path, engine):
    def must_not_load(*args, **kwargs):
        raise AssertionError("made or read weights before checking the device")
    monkeypatch.setattr(GLPModel, "from_preset", must_not_load)
    monkeypatch.setattr(GLPModel, "from_pretrained", must_not_load)
    for call in (lambda: Engine.from_preset("tiny", device="cuda"),
                 lambda: Engine.from_pretrained(tmp_path, tmp_path, tmp_path / "glue.safetensors", device="cuda"),
                 lambda: Engine.load(tmp_path / "no-artifact", device="cuda"),
                 lambda: Engine(engine.model, device="cuda:1")):
        with pytest.raises(DeviceUnavailable, match="needs CUDA"):
            call()
    assert engine.model.device == torch.device("cpu")  # nothing moved


@no_cuda
@pytest.mark.parametrize("argv", [
    ["predict", "--preset", "tiny", "--image", str(ROOT / "assets" / "example.png"), "--prompt", "hi", "--out", "OUT"],
    ["serve", "--preset", "tiny", "--no-warmup"],
    ["bench", "--preset", "tiny", "--configs", "eager-fp32", "--stages", ""],
], ids=["predict", "serve", "bench"])
def test_cli_device_cuda_without_cuda_exits_2_naming_cuda(argv, tmp_path, capsys):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv + ["--device", "cuda"]) == 2
    assert "CUDA" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@no_cuda
def test_engine_source_passes_the_device(engine):
    """The serving layers' engine source (also the Ray deployment's) takes a device; `cuda` used to raise a
    TypeError from Engine.__init__ for a preset."""
    assert EngineSource(preset="tiny", device="cpu").load().device == torch.device("cpu")
    with pytest.raises(DeviceUnavailable, match="CUDA"):
        EngineSource(preset="tiny", device="cuda").load()


def test_cuda_graphs_are_refused_on_cpu_tensors(engine, image):
    """A CUDA graph over CPU tensors would capture nothing: refused with a typed error, before CUDA is needed."""
    with pytest.raises(GraphCaptureError, match="device='cuda'"):
        Engine(engine.model, cuda_graphs=True)
    request = engine.prepare(image, "What happens next?", num_inference_steps=2)
    with torch.inference_mode():
        cond, mask = engine.adapt(engine.prefill(request, engine.vision(request)).world_latent)
        state, loop = engine.start_denoising(request, cond, mask, torch.Generator().manual_seed(0))
        with pytest.raises(GraphCaptureError, match=r"\d+ tensor\(s\) .*proj_in.weight on cpu"):
            GraphedDenoiser().run(engine.velocity, state, loop)


def test_streams_are_a_no_op_on_the_cpu():
    streams = BranchStreams(torch.device("cpu"))
    handoff = streams.handoff()
    assert handoff is None
    x = torch.ones(2)
    with streams.front(), streams.branch("video", handoff, x), streams.branch("text", handoff, x):
        assert torch.equal(x + 1, torch.full((2,), 2.0))
    with streams.branch("spatial"):
        done = streams.record("spatial")
    assert done is None and streams.wait(done, x) is None
