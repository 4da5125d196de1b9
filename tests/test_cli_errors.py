"""The command line speaks its own flags: every error a user can type is reported with the flag they typed,
before any weights load; `--help` and `--version` answer without importing torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from foresight_engine.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "assets" / "example.png")


def predict(*extra: str, image: str = EXAMPLE) -> list[str]:
    return ["predict", "--image", image, "--prompt", "What happens next?", "--out", "unused-out", *extra]


@pytest.fixture()
def no_weights(monkeypatch):
    """Fail the test if any model is built or loaded: these errors must come first."""
    from foresight_engine.engine import Engine

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the error was reported")
    for name in ("from_preset", "load", "from_pretrained"):
        monkeypatch.setattr(Engine, name, refuse)
    monkeypatch.setattr("foresight_engine.builders.source.ModelSource.load", refuse)


CASES = {
    "frames": (predict("--preset", "tiny", "--frames", "10"), "--frames 10 must be of the form 4*k+1 (e.g. 5 or 9)"),
    "height": (predict("--height", "30"), "--height 30 must be a positive multiple of 4"),
    "width": (predict("--width", "0"), "--width 0 must be a positive multiple of 4"),
    "steps": (predict("--steps", "0"), "--steps 0 must be in [1, 200]"),
    "guidance": (predict("--guidance", "0.5"), "--guidance 0.5 must be a finite number in [1, 30.0]"),
    "max-new-tokens": (predict("--max-new-tokens", "-1"), "--max-new-tokens -1 must be in [0, 4096]"),
    "seed": (predict("--seed", "-1"), "--seed -1 must be in [0, 18446744073709551615]"),
    "fps": (predict("--fps", "0"), "--fps 0 must be in [1, 240]"),
    "prompt": (["predict", "--image", EXAMPLE, "--prompt", " ", "--out", "x"], "--prompt must be a non-empty string"),
    "engine missing": (predict("--engine", "art/none"),
                       "--engine art/none: not an artifact directory (it does not exist)"),
    "engine not an artifact": (predict("--engine", str(ROOT / "assets")),
                               f"--engine {ROOT / 'assets'}: not an artifact directory (no manifest.json)"),
    "preset full": (predict("--preset", "full"), "--preset full has no weights of its own"),
    "preset unknown": (predict("--preset", "huge"), "--preset 'huge' is unknown; choose one of"),
    "partial real weights": (predict("--vlm", "qwen/"), "missing --decoder, --glue"),
    "two models": (predict("--preset", "tiny", "--engine", "art"), "--engine and --preset each choose the model"),
    "actual missing": (predict("--actual", "nothing.mp4"), "--actual video 'nothing.mp4' does not exist"),
    "plot not png": (predict("--plot", "timeline.jpg"), "--plot 'timeline.jpg' must be a .png path"),
    "ui preset full": (["ui", "--preset", "full"], "--preset full has no weights of its own"),
    "build frames": (["build", "--preset", "tiny", "--frames", "6", "--out", "x"], "build shape --frames 6 must be"),
    "build preset full": (["build", "--preset", "full", "--out", "x"], "--vlm QWEN2.5-VL_DIR --decoder LTX-VIDEO_DIR"),
    "plan frames": (["plan", "--preset", "tiny", "--gpu", "h100", "--frames", "10"], "plan: --frames 10 is not 4*k+1"),
    "inspect not an artifact": (["inspect", str(ROOT / "assets")], "not an artifact directory (no manifest.json)"),
}


@pytest.mark.parametrize("argv, message", CASES.values(), ids=CASES.keys())
def test_errors_name_the_flag_before_any_weights_load(argv, message, no_weights, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in the cases resolve to nothing here
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


@pytest.mark.parametrize("content", [b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20], ids=["text", "truncated"])
def test_unreadable_images_are_named_before_any_weights_load(content, no_weights, capsys, tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    bad.write_bytes(content)
    good.write_bytes(Path(EXAMPLE).read_bytes())
    assert main(["predict", "--image", str(good), "--image", str(bad), "--prompt", "hi", "--out", str(tmp_path)]) == 2
    assert f"error: --image {bad}: cannot decode image" in capsys.readouterr().err
    assert main(predict(image=str(tmp_path / "missing.png"))) == 2
    assert f"--image {tmp_path / 'missing.png'}: no such file" in capsys.readouterr().err


def test_plan_runs_for_every_preset(capsys):
    for name in ("tiny", "small"):  # full: tests/test_plan.py
        assert main(["plan", "--preset", name, "--gpu", "h100", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["preset"] == name and result["projected_step_s"] > 0


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_do_not_import_torch(flag):
    code = ("import sys, runpy; sys.argv = ['foresight-engine', %r]\n"
            "try:\n    runpy.run_module('foresight_engine.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'diffusers', 'lpips', 'matplotlib', 'gradio', "
            "'numpy') if m in sys.modules)\nprint('HEAVY', heavy)" % flag)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "HEAVY []" in out, out
    assert ("usage: foresight-engine" in out) if flag == "--help" else ("foresight-engine 0.1.0" in out)
