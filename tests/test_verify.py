"""Video I/O round trips and prediction-vs-actual metrics (PSNR, SSIM, LPIPS, alignment, weights, plot, CLI)."""
from __future__ import annotations

import argparse
import json
import math
import warnings

import imageio_ffmpeg
import lpips
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from foresight_engine.errors import InvalidInputError, VideoError, WeightsError
from foresight_engine.verify import cli as verify_cli
from foresight_engine.verify import load_lpips, lpips_backbone, save_lpips_weights, verify
from foresight_engine.verify.metrics import ssim_per_frame
from foresight_engine.video_io import read_video, write_mp4

RNG = np.random.default_rng(0)


def smooth_clip(frames: int = 8, height: int = 48, width: int = 64) -> np.ndarray:
    """A moving colour gradient, uint8 [F, H, W, 3]: compresses well, so H.264 error stays small."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    clip = [np.stack([128 + 100 * np.sin((x + 3 * t) / 9), 128 + 100 * np.cos((y - 2 * t) / 7),
                      128 + 60 * np.sin((x + y + t) / 13)], axis=-1) for t in range(frames)]
    return np.stack(clip).round().astype(np.uint8)


def add_noise(clip: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(clip + RNG.normal(0, sigma, clip.shape), 0, 255).round().astype(np.uint8)


@pytest.fixture(autouse=True)
def no_weights_env(monkeypatch):
    """Tests choose LPIPS weights explicitly; a developer's FORESIGHT_LPIPS_WEIGHTS must not leak in."""
    monkeypatch.delenv(lpips_backbone.WEIGHTS_ENV, raising=False)


def no_temp_files(directory) -> bool:
    return not [p for p in directory.iterdir() if ".tmp" in p.name]


# ---------------------------------------------------------------- video I/O

def test_mp4_round_trip(tmp_path):
    clip = smooth_clip(10, 48, 64)
    path = write_mp4(clip, tmp_path / "sub" / "clip.mp4", fps=24)
    frames, fps = read_video(path)
    assert frames.shape == clip.shape and frames.dtype == np.uint8
    assert fps == pytest.approx(24.0)
    # Lossy: yuv420p halves chroma resolution and H.264 (CRF 18) quantises; ~3.5 on this colourful pattern.
    assert np.abs(frames.astype(int) - clip).mean() < 5.0
    assert no_temp_files(path.parent)


def test_flat_colour_survives_round_trip(tmp_path):
    # A wrong RGB<->YUV matrix on either side would shift a flat colour by far more than rounding does.
    clip = np.empty((3, 32, 32, 3), np.uint8)
    clip[...] = (200, 60, 120)
    frames, _ = read_video(write_mp4(clip, tmp_path / "flat.mp4"))
    assert np.abs(frames.astype(int) - clip).max() <= 3


def test_odd_sides_are_padded_by_edge_replication(tmp_path):
    clip = smooth_clip(3, 31, 45)
    frames, _ = read_video(write_mp4(clip, tmp_path / "odd.mp4"))
    assert frames.shape == (3, 32, 46, 3)
    assert np.abs(frames[:, :31, :45].astype(int) - clip).mean() < 5.0
    assert np.abs(frames[:, 31].astype(int) - frames[:, 30]).mean() < 5.0  # replicated edge row


@pytest.mark.parametrize("frames, fps, name", [
    (np.zeros((2, 16, 16, 3), np.float32), 24, "clip.mp4"),  # dtype
    (np.zeros((2, 16, 16), np.uint8), 24, "clip.mp4"),  # shape
    (np.zeros((0, 16, 16, 3), np.uint8), 24, "clip.mp4"),  # no frames
    ([[0]], 24, "clip.mp4"),  # not an array
    (np.zeros((2, 16, 16, 3), np.uint8), 0, "clip.mp4"),  # fps
    (np.zeros((2, 16, 16, 3), np.uint8), 24, "clip.avi"),  # not .mp4
])
def test_bad_write_raises_before_writing(tmp_path, frames, fps, name):
    with pytest.raises(VideoError):
        write_mp4(frames, tmp_path / name, fps=fps)
    assert list(tmp_path.iterdir()) == []


def test_failed_encode_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old")
    monkeypatch.setattr(imageio_ffmpeg, "count_frames_and_secs", lambda path: (0, 0.0))  # ffmpeg "lost" frames
    with pytest.raises(OSError, match="wrote 0 of 4 frames"):
        write_mp4(smooth_clip(4, 16, 16), target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 50, None])
def test_unreadable_video_raises_typed_error_naming_path(tmp_path, content):
    path = tmp_path / "broken.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoError, match=r"broken\.mp4"):
        read_video(path)


# ---------------------------------------------------------------- PSNR / SSIM / alignment

def test_identical_clips():
    clip = smooth_clip(4, 32, 32)
    result = verify(clip, clip.copy(), lpips_weights=None)
    assert result.psnr == math.inf and all(math.isinf(v) for v in result.psnr_per_frame)
    assert result.ssim == 1.0 and result.ssim_per_frame == (1.0,) * 4
    assert result.alignment == "none"


def test_psnr_matches_numpy():
    actual = smooth_clip(5, 32, 40)
    predicted = add_noise(actual, 12.0)
    result = verify(predicted, actual)
    mse = ((predicted.astype(np.float64) - actual) ** 2).mean(axis=(1, 2, 3))
    expected = 10 * np.log10(255.0**2 / mse)
    np.testing.assert_allclose(result.psnr_per_frame, expected, rtol=1e-12)
    assert result.psnr == pytest.approx(expected.mean(), rel=1e-12)


def test_ssim_of_constant_frames_has_closed_form():
    # Constant frames have zero (co)variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1).
    a = np.full((1, 16, 16, 3), 100, np.uint8)
    b = np.full((1, 16, 16, 3), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim_per_frame(a, b)[0] == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), rel=1e-12)


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Independent numpy SSIM of two uint8 [H, W, 3] frames: 1-D np.convolve along rows then columns."""
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    g /= g.sum()

    def blur(img):
        rows = np.apply_along_axis(np.convolve, 1, img, g, "valid")
        return np.apply_along_axis(np.convolve, 0, rows, g, "valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for ch in range(3):
        p, q = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        mp, mq = blur(p), blur(q)
        vp, vq, cov = blur(p * p) - mp**2, blur(q * q) - mq**2, blur(p * q) - mp * mq
        values.append((((2 * mp * mq + c1) * (2 * cov + c2)) / ((mp**2 + mq**2 + c1) * (vp + vq + c2))).mean())
    return float(np.mean(values))


def test_ssim_matches_reference_and_decreases_with_noise():
    actual = smooth_clip(1, 40, 48)
    noisy = [add_noise(actual, sigma) for sigma in (2, 8, 32)]
    values = [ssim_per_frame(n, actual)[0] for n in noisy]
    for value, n in zip(values, noisy, strict=True):
        assert value == pytest.approx(_ssim_reference(n[0], actual[0]), abs=1e-10)
    assert 1.0 > values[0] > values[1] > values[2]


def test_ssim_matches_skimage_when_installed():
    metrics_mod = pytest.importorskip("skimage.metrics")
    actual = smooth_clip(1, 40, 48)
    predicted = add_noise(actual, 10)
    expected = metrics_mod.structural_similarity(predicted[0], actual[0], data_range=255, channel_axis=-1,
                                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim_per_frame(predicted, actual)[0] == pytest.approx(expected, abs=1e-10)


def test_length_mismatch_resamples_longer_clip_by_nearest_index():
    predicted = smooth_clip(6, 24, 24)
    actual = predicted[[0, 2, 3, 5]]  # np.linspace(0, 5, 4).round() == [0, 2, 3, 5]
    result = verify(predicted, actual)
    assert result.frames == 4
    assert "predicted resampled 6 -> 4" in result.alignment
    assert result.psnr == math.inf


def test_size_mismatch_resizes_both_to_smaller():
    predicted, actual = smooth_clip(2, 40, 30), smooth_clip(2, 32, 48)
    result = verify(predicted, actual)
    assert (result.height, result.width) == (32, 30)
    assert "predicted 40x30" in result.alignment and "actual 32x48" in result.alignment
    assert "resized to 32x30" in result.alignment


def test_temporal_consistency_without_lpips_uses_pixels():
    static = np.repeat(smooth_clip(1, 24, 24), 5, axis=0)
    moving = add_noise(static, 40)
    result = verify(static, moving)
    tc = result.temporal_consistency
    assert "pixels" in tc.features
    assert tc.predicted == pytest.approx(1.0) and tc.actual < tc.predicted
    assert verify(static[:1], moving[:1]).temporal_consistency.predicted is None


@pytest.mark.parametrize("kwargs, match", [
    ({"predicted": np.zeros((2, 16, 16, 3), np.float32)}, "predicted must have dtype uint8"),
    ({"predicted": "missing.mp4"}, "missing.mp4"),
    ({"predicted": 3}, "predicted must be"),
    ({"lpips_net": "squeeze"}, "lpips_net"),
    ({"plot": "curves.jpg"}, "curves.jpg"),
    ({"predicted": np.zeros((2, 8, 8, 3), np.uint8), "actual": np.zeros((2, 8, 8, 3), np.uint8)}, "SSIM window"),
])
def test_bad_verify_input_raises_typed_error(kwargs, match):
    args = {"predicted": smooth_clip(2, 16, 16), "actual": smooth_clip(2, 16, 16)} | kwargs
    with pytest.raises(InvalidInputError, match=match):
        verify(args.pop("predicted"), args.pop("actual"), **args)


# ---------------------------------------------------------------- LPIPS weights

def random_lpips() -> lpips.LPIPS:
    """LPIPS-alex with random trunk and linear heads: no file read, no download."""
    with warnings.catch_warnings():  # lpips passes torchvision the deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False).eval()


@pytest.fixture(scope="module")
def lpips_model() -> lpips.LPIPS:
    torch.manual_seed(0)
    return random_lpips()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, lpips_model):
    directory = tmp_path_factory.mktemp("lpips")
    save_lpips_weights(lpips_model, directory)
    return directory


def test_lpips_loaded_from_safetensors_matches_in_memory_model(weights_dir, lpips_model):
    actual = smooth_clip(3, 32, 48)
    predicted = add_noise(actual, 20)
    result = verify(predicted, actual, lpips_weights=weights_dir)
    with torch.inference_mode():
        to_input = lambda c: torch.from_numpy(c).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
        expected = lpips_model(to_input(predicted), to_input(actual)).flatten()
    np.testing.assert_allclose(result.lpips_per_frame, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert result.lpips == pytest.approx(float(expected.mean()), rel=1e-5, abs=1e-6)
    assert result.lpips_missing is None and "LPIPS-alex" in result.temporal_consistency.features


def test_identical_clips_have_zero_lpips(weights_dir):
    clip = smooth_clip(2, 32, 32)
    result = verify(clip, clip, lpips_weights=weights_dir)
    assert result.lpips == 0.0 and result.lpips_per_frame == (0.0, 0.0)


def test_weights_found_through_environment(weights_dir, monkeypatch):
    monkeypatch.setenv(lpips_backbone.WEIGHTS_ENV, str(weights_dir))
    assert verify(smooth_clip(2, 32, 32), smooth_clip(2, 32, 32)).lpips is not None


def test_missing_weights_skip_lpips_and_name_the_file(tmp_path):
    clip = smooth_clip(2, 32, 32)
    result = verify(clip, add_noise(clip, 5), lpips_weights=tmp_path)
    assert result.lpips is None and result.lpips_per_frame is None
    assert str(tmp_path / "alex_backbone.safetensors") in result.lpips_missing
    assert lpips_backbone.WEIGHTS_ENV in result.lpips_missing and "convert --net alex" in result.lpips_missing
    assert result.ssim < 1.0 and math.isfinite(result.psnr)
    unset = verify(clip, clip).lpips_missing
    assert "alex_backbone.safetensors" in unset and lpips_backbone.WEIGHTS_ENV in unset


def _tampered_copy(weights_dir, tmp_path, edit) -> lpips_backbone.LpipsWeights:
    files = lpips_backbone.weight_files("alex", tmp_path)
    tmp_path.joinpath(files.lin.name).write_bytes((weights_dir / files.lin.name).read_bytes())
    tensors = load_file(str(weights_dir / files.backbone.name))
    edit(tensors)
    save_file(tensors, str(files.backbone))
    return files


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.pop("10.weight"), r"missing tensors \['10.weight'\]"),
    (lambda t: t.update({"0.weight": t["0.weight"][:32]}), r"0.weight \[32, 3, 11, 11\]"),
    (lambda t: t["3.bias"].fill_(float("nan")), r"non-finite values in tensors \['3.bias'\]"),
])
def test_partial_or_tampered_weights_raise(weights_dir, tmp_path, edit, match):
    files = _tampered_copy(weights_dir, tmp_path, edit)
    with pytest.raises(WeightsError, match=match):
        load_lpips(files)
    with pytest.raises(WeightsError):
        verify(smooth_clip(2, 32, 32), smooth_clip(2, 32, 32), lpips_weights=tmp_path)


def test_truncated_weights_file_raises(weights_dir, tmp_path):
    files = _tampered_copy(weights_dir, tmp_path, lambda t: None)
    files.backbone.write_bytes(files.backbone.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=r"alex_backbone\.safetensors"):
        load_lpips(files)


def test_convert_from_local_checkpoints(tmp_path):
    torch.manual_seed(1)
    # A torchvision AlexNet state dict: lpips' "slice1.0.weight" is torchvision's "features.0.weight".
    trunk = {"features." + k.split(".", 1)[1]: v for k, v in random_lpips().net.state_dict().items()}
    trunk["classifier.1.weight"] = torch.zeros(2, 2)  # full torchvision state dicts carry the classifier too
    torch.save(trunk, tmp_path / "alexnet.pth")
    out = tmp_path / "weights"
    rc = lpips_backbone.main(["convert", "--net", "alex", "--out", str(out),
                              "--torchvision-checkpoint", str(tmp_path / "alexnet.pth")])
    assert rc == 0
    model = load_lpips(lpips_backbone.locate_lpips_weights("alex", out))
    torch.testing.assert_close(model.net.slice1[0].weight, trunk["features.0.weight"])
    shipped = torch.load(lpips_backbone.Path(lpips.__file__).parent / "weights/v0.1/alex.pth",
                         map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.lins[4].model[1].weight, shipped["lin4.model.1.weight"])
    assert lpips_backbone.main(["convert", "--out", str(out), "--torchvision-checkpoint", "nowhere.pth"]) == 1


def test_convert_without_the_trunk_says_where_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lpips_backbone.torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert lpips_backbone.main(["convert", "--net", "vgg", "--out", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "vgg16-397923af.pth" in err and "--torchvision-checkpoint" in err
    assert "torchvision.models.vgg16(weights='IMAGENET1K_V1')" in err and str(tmp_path / "hub") in err


# ---------------------------------------------------------------- plot and CLI

def test_plot_and_cli_json(tmp_path, weights_dir, capsys):
    actual = smooth_clip(4, 32, 48)
    write_mp4(actual, tmp_path / "actual.mp4")
    write_mp4(add_noise(actual, 10), tmp_path / "pred.mp4")
    parser = argparse.ArgumentParser()
    verify_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["verify", "--pred", str(tmp_path / "pred.mp4"), "--actual", str(tmp_path / "actual.mp4"),
                              "--lpips-weights", str(weights_dir), "--plot", str(tmp_path / "out" / "curves.png"),
                              "--json", str(tmp_path / "out" / "metrics.json")])
    assert args.func(args) == 0
    assert "PSNR" in capsys.readouterr().out
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(data["psnr_per_frame"]) == 4 and data["lpips"] is not None and data["alignment"] == "none"
    assert no_temp_files(tmp_path / "out")


def test_plot_handles_identical_frames_and_missing_lpips(tmp_path):
    clip = smooth_clip(3, 16, 16)
    result = verify(clip, clip, plot=tmp_path / "curves.png")
    assert result.lpips is None and (tmp_path / "curves.png").stat().st_size > 0
    assert set(result.to_dict()) >= {"psnr", "ssim", "lpips", "temporal_consistency", "psnr_per_frame",
                                      "ssim_per_frame", "lpips_per_frame", "alignment", "lpips_missing"}
