"""Builders on the tiny preset: eager artifacts, the content-keyed cache, verification before loading, the CLI."""
import io
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from foresight_engine import artifact
from foresight_engine.artifact import Manifest, build_atomically, cached, read_manifest
from foresight_engine.builders.build import build
from foresight_engine.builders.plan import resolve_plan
from foresight_engine.builders.source import ModelSource, weights_hash
from foresight_engine.cli import main
from foresight_engine.engine import Engine
from foresight_engine.errors import ArtifactError, BackendUnavailable, ConfigError
from foresight_engine.models.export_spec import BuildShape, export_specs
from foresight_engine.models.glp import GLPModel
from foresight_engine.precision import Precision, PrecisionPolicy

PROMPT = "What happens next?"


@pytest.fixture(scope="module")
def tiny() -> GLPModel:
    return GLPModel.from_preset("tiny", 0)


def _copy(result, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(result.directory, dst)
    return dst


# ------------------------------------------------------------------------------------------ precision, specs
@pytest.mark.parametrize("precision", [p.value for p in Precision])
def test_precision_policy_round_trips_json(precision):
    policy = PrecisionPolicy.for_precision(precision)
    assert PrecisionPolicy.from_json(policy.to_json()) == policy


def test_fp8_policy_keeps_sensitive_parts_high():
    policy = PrecisionPolicy.for_precision("fp8")
    assert policy.backbone == policy.video_decoder == Precision.FP8
    assert policy.vae == policy.vision_tower == Precision.BF16
    assert policy.keeps_high("decoder.transformer.proj_out") and not policy.keeps_high("blocks.0.attn1.to_q")
    assert policy.dtype("backbone") == torch.bfloat16
    assert PrecisionPolicy.for_precision("fp16").vae == Precision.FP32
    with pytest.raises(ConfigError, match="int4"):
        Precision.parse("int4")


def test_export_specs_describe_their_stages(tiny):
    shape = BuildShape.for_config(tiny.config)
    for name, spec in export_specs(tiny.config).items():
        inputs = spec.sample_inputs(shape)
        assert len(inputs) == len(spec.input_names), name
        with torch.inference_mode():
            out = spec.wrap(tiny, shape)(*inputs)
        assert len(out if isinstance(out, tuple) else (out,)) == len(spec.output_names), name
        for input_name, (lo, opt, hi) in spec.profile(shape).items():
            assert input_name in spec.input_names
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), (name, input_name)
        assert all(torch.equal(a, b) for a, b in zip(inputs, spec.sample_inputs(shape)))  # seeded


def test_export_specs_name_every_stage_once(tiny):
    from foresight_engine.config import preset
    from foresight_engine.models.export_spec import STAGES
    assert tuple(export_specs(tiny.config)) == tuple(s for s in STAGES if s != "spatial")  # hybrid encoder only
    assert tuple(export_specs(preset("tiny-hybrid"))) == STAGES
    assert tuple(export_specs(preset("tiny-hunyuan15"))) == tuple(s for s in STAGES if s != "spatial")


def test_prefill_on_a_cached_prefix_equals_one_prefill_and_decode_masks_the_unfilled_slots(tiny):
    """The stage wrappers over the one KV cache: prefilling a prompt in two parts (the second on top of the first's
    keys/values) equals prefilling it at once; a decode step over the whole buffer ignores the slots >= `slot`."""
    specs, shape = export_specs(tiny.config), BuildShape.for_config(tiny.config)
    prefill, decode = specs["prefill"].wrap(tiny, shape), specs["decode"].wrap(tiny, shape)
    embeds, positions, past, _ = specs["prefill"].sample_inputs(shape)
    none = past[:, :, :, :0]
    with torch.inference_mode():
        logits, latent, keys, values = prefill(embeds, positions, none, none)
        cut = embeds.shape[1] // 2  # two non-empty parts whatever the built prompt length
        _, _, k1, v1 = prefill(embeds[:, :cut], positions[:, :, :cut], none, none)
        logits2, latent2, k2, v2 = prefill(embeds[:, cut:], positions[:, :, cut:], k1, v1)
        torch.testing.assert_close(logits2, logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(latent2, latent, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.cat([k1, k2], dim=3), keys, rtol=1e-5, atol=1e-5)

        token, position, buffer_k, buffer_v, slot = specs["decode"].sample_inputs(shape)
        n = int(slot)
        step, new_k, _ = decode(token, position, buffer_k, buffer_v, slot)
        exact, exact_k, _ = decode(token, position, buffer_k[:, :, :, :n], buffer_v[:, :, :, :n], slot)
        scrambled = buffer_k.clone()
        scrambled[:, :, :, n:] = 1e3  # stale slots of an earlier request
        again, _, _ = decode(token, position, scrambled, buffer_v, slot)
    torch.testing.assert_close(step, exact, rtol=1e-5, atol=1e-5)
    assert torch.equal(again, step) and new_k.shape[3] == 1
    torch.testing.assert_close(new_k, exact_k, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- artifacts
def test_eager_artifact_reproduces_from_preset(eager_fp32, engine, image):
    assert not eager_fp32.cache_hit
    assert eager_fp32.accuracy.frame_psnr == float("inf") and eager_fp32.accuracy.token_agreement == 1.0
    loaded = Engine.load(eager_fp32.directory)
    want = engine.predict(image, PROMPT, seed=3)
    got = loaded.predict(image, PROMPT, seed=3)
    assert got.token_ids == want.token_ids and got.text == want.text
    assert np.array_equal(got.frames, want.frames)
    assert torch.equal(got.world_latent, want.world_latent)


def test_layout_and_manifest(eager_fp32):
    d = eager_fp32.directory
    manifest = read_manifest(d)
    assert {p.name for p in d.iterdir()} == {"manifest.json", "processor", "vision_tower", "backbone", "adapter",
                                            "video_decoder", "vae"}
    f = manifest.factors
    assert f.backend == "eager" and f.precision["vae"] == "fp32" and f.config["name"] == "tiny"
    assert f.toolchain["torch"] == torch.__version__.split("+")[0] or f.toolchain["torch"] == torch.__version__
    assert f.device["type"] == "cpu" and len(f.weights_hash) == 64
    assert "denoise" in f.shapes["stages"] and manifest.key == f.key()
    assert all(len(v["sha256"]) == 64 for v in manifest.files.values())
    assert "backbone/weights.safetensors" in manifest.files


def test_second_build_is_a_cache_hit_and_log_level_is_not_a_factor(eager_fp32, tiny):
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        again = build(tiny, eager_fp32.directory, backend="eager", precision="fp32")
    finally:
        root.setLevel(level)
    assert again.cache_hit and again.key == eager_fp32.key


def test_cache_key_sensitivity(tiny):
    shape = BuildShape.for_config(tiny.config)
    fp32 = PrecisionPolicy.for_precision("fp32")
    base_hash = weights_hash(tiny)
    base = resolve_plan(tiny, base_hash, "eager", fp32, shape).key
    assert resolve_plan(tiny, base_hash, "eager", fp32, shape).key == base  # deterministic
    changed = GLPModel.from_preset("tiny", 0)
    with torch.no_grad():
        w = changed.adapter.proj_out.weight
        w.view(torch.uint8).view(-1)[0] ^= 1  # one flipped bit of one byte
    assert weights_hash(changed) != base_hash
    keys = {
        "weights": resolve_plan(changed, weights_hash(changed), "eager", fp32, shape).key,
        "precision": resolve_plan(tiny, base_hash, "eager", PrecisionPolicy.for_precision("bf16"), shape).key,
        "profile": resolve_plan(tiny, base_hash, "eager", fp32, BuildShape(64, 64, 13)).key,
        "calibration": resolve_plan(tiny, base_hash, "eager", fp32, shape, calibration_hash="ab" * 32).key,
        "backend": resolve_plan(tiny, base_hash, "compile", fp32, shape).key,
    }
    assert all(k != base for k in keys.values()), keys
    assert len(set(keys.values())) == len(keys)


def test_flipped_byte_is_refused_before_deserializing(eager_fp32, tmp_path, monkeypatch):
    d = _copy(eager_fp32, tmp_path)
    weights = d / "adapter" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    import foresight_engine.engine.artifact_loader as loader

    def must_not_run(*a, **k):
        raise AssertionError("deserialized before verifying")
    monkeypatch.setattr(loader, "read_safetensors", must_not_run)
    monkeypatch.setattr(loader.AutoProcessor, "from_pretrained", must_not_run)
    with pytest.raises(ArtifactError, match=r"^rebuild needed: file adapter/weights.safetensors was modified"):
        Engine.load(d)
    assert cached(d, eager_fp32.key) is None


def test_truncated_file_is_refused(eager_fp32, tmp_path):
    d = _copy(eager_fp32, tmp_path)
    weights = d / "video_decoder" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtifactError, match=r"^rebuild needed: file video_decoder/weights.safetensors is truncated"):
        Engine.load(d)


def test_other_torch_version_and_other_device_are_refused(eager_fp32, monkeypatch):
    real = artifact.toolchain()
    monkeypatch.setattr(artifact, "toolchain", lambda: {**real, "torch": "9.9.9"})
    with pytest.raises(ArtifactError, match=r"^rebuild needed: torch version changed .*9\.9\.9"):
        Engine.load(eager_fp32.directory)
    monkeypatch.setattr(artifact, "toolchain", lambda: real)
    info = artifact.device_info()
    monkeypatch.setattr(artifact, "device_info", lambda device="cpu": {**info, "name": "Other CPU 9000"})
    with pytest.raises(ArtifactError, match=r"^rebuild needed: other device.*Other CPU 9000"):
        Engine.load(eager_fp32.directory)


def test_edited_manifest_is_refused(eager_fp32, tmp_path):
    d = _copy(eager_fp32, tmp_path)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["factors"]["precision"]["vae"] = "bf16"
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"^rebuild needed: manifest digest .* the manifest was edited"):
        Engine.load(d)
    manifest["digest"] = artifact.manifest_digest(manifest)  # a consistent digest: the key still disagrees
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"^rebuild needed: manifest key .* the manifest was edited"):
        Engine.load(d)


def _manifest_for(key: str) -> Manifest:
    factors = artifact.KeyFactors(config={"name": "x"}, weights_hash="0" * 64, precision={}, shapes={},
                                  backend="eager", toolchain=artifact.toolchain(), device=artifact.device_info())
    return Manifest(factors.key(), factors, components={})


def test_killed_build_leaves_nothing_valid_and_concurrent_builds_build_once(tmp_path):
    target = tmp_path / "art"
    key = _manifest_for("").key

    def crash(tmp: Path) -> Manifest:
        (tmp / "half.bin").write_bytes(b"x" * 10)
        raise KeyboardInterrupt  # as if killed mid-build
    with pytest.raises(KeyboardInterrupt):
        build_atomically(target, key, crash)
    assert not target.exists() and not list(tmp_path.glob(".art.tmp-*"))
    # a hard kill leaves a temp dir without a manifest: never a cache hit, refused by the loader
    orphan = tmp_path / ".art.tmp-killed"
    orphan.mkdir()
    (orphan / "half.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="not an artifact directory .no manifest.json; a build that did not finish"):
        Engine.load(orphan)

    calls = []

    def slow(tmp: Path) -> Manifest:
        calls.append(1)
        (tmp / "data.bin").write_bytes(b"payload")
        time.sleep(0.5)
        return _manifest_for("")
    results = []
    threads = [threading.Thread(target=lambda: results.append(build_atomically(target, key, slow)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(hit for _, hit in results) == [False, True]
    assert not orphan.exists()  # stale temp dirs are swept under the lock


def _modes(root: Path) -> dict[str, set[int]]:
    paths = [root, *root.rglob("*")]
    return {"dirs": {p.stat().st_mode & 0o777 for p in paths if p.is_dir()},
            "files": {p.stat().st_mode & 0o777 for p in paths if p.is_file()}}


def test_artifacts_keep_the_users_umask(eager_fp32, tmp_path):
    """A shared cache: a group-writable umask gives group-writable artifacts (not mkdtemp's 0700)."""
    umask = os.umask(0o022)
    os.umask(umask)
    assert _modes(eager_fp32.directory) == {"dirs": {0o777 & ~umask}, "files": {0o666 & ~umask}}

    def write(tmp: Path) -> Manifest:
        (tmp / "component").mkdir()
        (tmp / "component" / "weights.bin").write_bytes(b"x")
        return _manifest_for("")
    old = os.umask(0o002)
    try:
        build_atomically(tmp_path / "shared", _manifest_for("").key, write)
    finally:
        os.umask(old)
    assert _modes(tmp_path / "shared") == {"dirs": {0o775}, "files": {0o664}}


def test_tensorrt_without_gpu_fails_before_any_work(monkeypatch, tmp_path):
    def must_not_load(self):
        raise AssertionError("loaded the model before the capability check")
    monkeypatch.setattr(ModelSource, "load", must_not_load)
    with pytest.raises(BackendUnavailable, match=r"CUDA device.*--backend onnx"):
        build(ModelSource(preset="tiny"), tmp_path / "trt", backend="tensorrt", precision="fp8")
    assert not (tmp_path / "trt").exists()


def test_unsupported_combinations_are_refused(tiny, tmp_path):
    with pytest.raises(ConfigError, match="fp8 needs --backend onnx, tensorrt or torch-tensorrt"):
        build(tiny, tmp_path / "a", backend="eager", precision="fp8")
    with pytest.raises(ConfigError, match="no ONNX Runtime CPU kernels"):
        build(tiny, tmp_path / "b", backend="onnx", precision="bf16")


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_dry_run_inspect_and_predict_engine(eager_fp32, tmp_path, capsys, image):
    assert main(["build", "--preset", "tiny", "--backend", "eager", "--precision", "bf16",
                 "--out", str(tmp_path / "plan"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cache: miss" in out and "denoise" in out and "bf16" in out and "estimated memory" in out
    assert not (tmp_path / "plan").exists()
    assert main(["build", "--preset", "tiny", "--out", str(eager_fp32.directory), "--dry-run"]) == 0
    assert "cache: HIT" in capsys.readouterr().out
    assert main(["inspect", str(eager_fp32.directory)]) == 0
    out = capsys.readouterr().out
    assert eager_fp32.key[:16] in out and "verifies here: yes" in out
    table = out[out.index("accuracy against eager fp32"):]  # the report as a table, not a JSON line
    assert "stage" in table and "rel L2" in table and "cosine" in table and "end to end (fp32): frame PSNR" in table
    assert all(f"\n    {stage} " in table for stage in ("vision", "prefill", "denoise", "vae_decode"))
    from PIL import Image
    Image.fromarray(image).save(tmp_path / "in.png")
    assert main(["predict", "--engine", str(eager_fp32.directory), "--image", str(tmp_path / "in.png"),
                 "--prompt", PROMPT, "--out", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "prediction.mp4").stat().st_size > 0


def test_accuracy_gate_fails_the_build_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "strict"
    assert main(["build", "--preset", "tiny", "--precision", "bf16", "--out", str(out), "--max-rel-l2", "1e-6"]) == 2
    err = capsys.readouterr().err
    assert "accuracy gate failed for the bf16 build" in err and "denoise: relative_l2" in err and "--no-gate" in err
    assert not out.exists() and not list(tmp_path.glob(".strict.tmp-*"))


def test_engine_and_models_never_import_builders():
    """Build and run meet only at an artifact directory; model code does not know onnx or tensorrt either."""
    root = Path(__file__).resolve().parents[1] / "foresight_engine"
    forbidden = {"engine": ("builders",), "models": ("builders", "onnx", "tensorrt")}
    for folder, names in forbidden.items():
        for source in (root / folder).rglob("*.py"):
            imports = [line.split()[1] for line in source.read_text().splitlines()
                       if line.lstrip().startswith(("import ", "from "))]
            assert not any(name in module for module in imports for name in names), source


def test_build_progress_bar_only_on_a_terminal(monkeypatch):
    from foresight_engine.builders.progress import BuildProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stderr, shown in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stderr)
        with BuildProgress(True) as bar:
            bar.expect(2)
            with bar.step("weights"):
                pass
            with bar.step("export denoise"):
                pass
        assert ("build: export denoise:  1/2 steps" in stderr.getvalue()) == shown
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with BuildProgress(False) as bar:  # off when embedded, terminal or not
        with bar.step("weights"):
            pass
    assert terminal.getvalue() == ""
