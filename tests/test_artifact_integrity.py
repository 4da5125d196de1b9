"""The artifact verified whole before anything in it is deserialized: a manifest digest over every field the loader
reads, every path confined to the artifact and listed with its sha256, nothing unlisted, stage backends checked.

Each tampering case rewrites the manifest the way an attacker with write access would (key and digest recomputed
where that gets past the earlier checks), and asserts the refusal comes before any file is deserialized."""
import json
import os
import shutil
from pathlib import Path

import pytest

from foresight_engine import Engine, artifact
from foresight_engine.errors import ArtifactError


@pytest.fixture(scope="module")
def built(eager_fp32) -> Path:
    return eager_fp32.directory


@pytest.fixture()
def copy(built, tmp_path, monkeypatch) -> Path:
    """A copy of the artifact; reading any of its weights or processor files fails the test."""
    import foresight_engine.engine.artifact_loader as loader

    def must_not_run(*a, **k):
        raise AssertionError("a file was deserialized before the artifact was verified")
    monkeypatch.setattr(loader, "read_safetensors", must_not_run)
    monkeypatch.setattr(loader.AutoProcessor, "from_pretrained", must_not_run)
    shutil.copytree(built, tmp_path / "art")
    return tmp_path / "art"


def rewrite(directory: Path, edit, rekey: bool = False) -> None:
    """Edit the manifest's JSON, then recompute its key (optionally) and digest, as a forger would."""
    path = directory / artifact.MANIFEST
    data = json.loads(path.read_text())
    edit(data)
    if rekey:
        data["key"] = artifact.KeyFactors.from_dict(data["factors"]).key()
    data["digest"] = artifact.manifest_digest(data)
    path.write_text(json.dumps(data))


def onnx_stage(path: str):
    """The denoise stage made an ONNX stage whose graph is `path` (the artifact's backend too: key recomputed)."""
    def edit(data):
        data["factors"]["backend"] = "onnx"
        data["components"]["video_decoder"]["stages"]["denoise"].update(backend="onnx", file=path)
    return edit


def test_unlisted_file_in_the_processor_folder_is_refused(copy):
    """transformers reads the processor folder whole: an extra chat_template.json would change the tokens."""
    (copy / "processor" / "chat_template.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    with pytest.raises(ArtifactError, match=r"file processor/chat_template.json is not listed in the manifest"):
        Engine.load(copy)


@pytest.mark.parametrize("path", ["../../evil.onnx", "/tmp/evil.onnx", "video_decoder/../../evil.onnx",
                                  "video_decoder/./denoise.onnx", "C:/evil.onnx"])
def test_stage_file_outside_the_artifact_is_refused(copy, path):
    rewrite(copy, onnx_stage(path), rekey=True)
    with pytest.raises(ArtifactError, match=r"artifact paths must be relative, inside the artifact"):
        Engine.load(copy)


def test_stage_file_not_listed_is_refused(copy):
    (copy / "video_decoder" / "denoise.onnx").write_bytes(b"never checked")
    rewrite(copy, onnx_stage("video_decoder/denoise.onnx"), rekey=True)
    with pytest.raises(ArtifactError, match=r"files table does not list \['video_decoder/denoise.onnx'\]"):
        Engine.load(copy)


def test_files_table_path_outside_is_refused(copy, tmp_path):
    (tmp_path / "outside.bin").write_bytes(b"x")
    rewrite(copy, lambda d: d["files"].update({"../outside.bin": {"sha256": "0" * 64, "bytes": 1}}))
    with pytest.raises(ArtifactError, match=r"the path '../outside.bin'"):
        Engine.load(copy)


def test_symlink_escaping_the_artifact_is_refused(copy, tmp_path):
    """Same bytes, same sha256, but the file lives outside: refused (a swap outside would go unnoticed later)."""
    weights = copy / "adapter" / "weights.safetensors"
    outside = tmp_path / "adapter.safetensors"
    shutil.copyfile(weights, outside)
    weights.unlink()
    os.symlink(outside, weights)
    with pytest.raises(ArtifactError, match=r"file adapter/weights.safetensors resolves outside the artifact"):
        Engine.load(copy)


def test_symlinked_folder_is_refused(copy, tmp_path):
    shutil.move(copy / "processor", tmp_path / "processor")
    os.symlink(tmp_path / "processor", copy / "processor")
    with pytest.raises(ArtifactError, match=r"processor is a symlinked folder"):
        Engine.load(copy)


@pytest.mark.parametrize("section", ["components", "files"])
def test_components_and_files_table_are_covered_by_the_digest(copy, section):
    path = copy / artifact.MANIFEST
    data = json.loads(path.read_text())
    if section == "components":
        data["components"]["vae"]["precision"] = "bf16"
    else:
        entry = data["files"]["adapter/weights.safetensors"]
        entry["sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"manifest digest .* the manifest was edited"):
        Engine.load(copy)


@pytest.mark.parametrize("edit, rekey, match", [
    (lambda d: d["components"]["video_decoder"]["stages"]["denoise"].update(backend="magic"), False,
     r"stage denoise: backend 'magic' is neither this artifact's \('eager'\) nor eager"),
    (lambda d: d["factors"].update(backend="magic"), True, r"artifact backend 'magic' is not one this engine knows"),
    (lambda d: d["components"].update(extra={"precision": "fp32"}), False, r"component 'extra' is not one of"),
    (lambda d: d["components"]["vae"].update(runner="os.system"), False, r"unknown field\(s\) \['runner'\]"),
    (lambda d: d.update(plugins=["x"]), False, r"manifest has unknown field\(s\) \['plugins'\]"),
    (lambda d: d["factors"]["shapes"]["build"].update(height=-64), True, r"factors do not describe a model"),
])
def test_backends_and_fields_are_checked_before_any_file_is_read(copy, edit, rekey, match):
    rewrite(copy, edit, rekey)
    with pytest.raises(ArtifactError, match=match):
        Engine.load(copy)


def test_pinned_digest(built, copy):
    digest = artifact.read_manifest(built).digest
    with pytest.raises(ArtifactError, match=r"is not the pinned 0000000000000000"):
        Engine.load(copy, digest="0" * 64)
    assert artifact.verify(copy, digest=digest).digest == digest  # the right pin passes (the fixture forbids loading)
