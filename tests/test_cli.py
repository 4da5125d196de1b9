import json
import subprocess
import sys
from pathlib import Path

import pytest

from foresight_engine.cli import main
from foresight_engine.video_io import read_video

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "foresight_engine.cli", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert "predict" in out


def test_predict_writes_video_and_json(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["predict", "--preset", "tiny", "--image", str(ROOT / "assets" / "example.png"), "--prompt",
                 "What happens next?", "--out", str(out), "--frames", "5", "--height", "32", "--width", "48",
                 "--steps", "2", "--seed", "3", "--max-new-tokens", "3"])
    assert code == 0
    summary = json.loads((out / "prediction.json").read_text())
    assert summary["settings"] == {"height": 32, "width": 48, "num_frames": 5, "num_inference_steps": 2,
                                   "guidance_scale": 1.0, "max_new_tokens": 3, "seed": 3, "frame_rate": 24}
    assert set(summary["timings"]) >= {"vision", "prefill", "adapter", "denoise", "vae", "text"}
    assert len(summary["token_ids"]) <= 3
    frames, fps = read_video(out / "prediction.mp4")
    assert frames.shape == (5, 32, 48, 3) and fps == 24
    assert "prediction.mp4" in capsys.readouterr().out


def test_bad_input_exits_2_with_message(tmp_path, capsys):
    code = main(["predict", "--preset", "tiny", "--image", str(ROOT / "assets" / "example.png"), "--prompt", "hi",
                 "--out", str(tmp_path), "--frames", "6"])
    assert code == 2
    assert "--frames 6 must be of the form 4*k+1" in capsys.readouterr().err
    assert not (tmp_path / "prediction.mp4").exists()


def test_verify_subcommand_writes_strict_json(tmp_path, capsys):
    import numpy as np
    from foresight_engine.video_io import write_mp4
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    write_mp4(clip, tmp_path / "a.mp4", fps=8)
    write_mp4(np.clip(clip.astype(int) + 20, 0, 255).astype(np.uint8), tmp_path / "b.mp4", fps=8)
    code = main(["verify", "--pred", str(tmp_path / "a.mp4"), "--actual", str(tmp_path / "a.mp4"),
                 "--json", str(tmp_path / "same.json")])
    assert code == 0
    same = json.loads((tmp_path / "same.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert same["psnr"] == "inf" and same["ssim"] == pytest.approx(1.0)
    assert main(["verify", "--pred", str(tmp_path / "a.mp4"), "--actual", str(tmp_path / "b.mp4"),
                 "--json", str(tmp_path / "diff.json")]) == 0
    diff = json.loads((tmp_path / "diff.json").read_text())
    assert 5 < diff["psnr"] < 60 and diff["lpips"] is None and "FORESIGHT_LPIPS_WEIGHTS" in diff["lpips_missing"]
