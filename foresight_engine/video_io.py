"""Read and write videos as uint8 RGB arrays [F, H, W, 3] with the ffmpeg binary shipped in imageio-ffmpeg.

Every output file is written next to its destination under a temporary name and moved into place with
`os.replace`, so a failed write never leaves a half-written file behind.
"""
from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from .errors import VideoError

logger = logging.getLogger(__name__)

# x264 constant rate factor: 18 is x264's "visually lossless" point; the imageio-ffmpeg default maps to 25.
_CRF = 18


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it onto `path` on success, delete it on any error.

    The temporary file lives in the destination directory (created if missing) so that `os.replace` is a
    rename within one filesystem, hence atomic. It keeps `path`'s suffix so that writers which pick the
    format from the extension (ffmpeg, matplotlib) behave as for the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_frames(frames: object, name: str = "frames") -> np.ndarray:
    """Return `frames` if it is a uint8 array [F>0, H>0, W>0, 3]; otherwise raise `VideoError` naming `name`."""
    if not isinstance(frames, np.ndarray):
        raise VideoError(f"{name} must be a numpy uint8 array [F, H, W, 3], got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise VideoError(f"{name} must have dtype uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise VideoError(f"{name} must have shape [F>0, H>0, W>0, 3], got {list(frames.shape)}")
    return frames


def write_mp4(frames: np.ndarray, path: str | os.PathLike[str], fps: int = 24) -> Path:
    """Encode `frames` (uint8 [F, H, W, 3], RGB) as H.264 (libx264, yuv420p, CRF 18) into the .mp4 file `path`.

    yuv420p subsamples chroma 2x2, so both sides must be even: an odd height or width is padded by one row
    or column replicating the edge pixels (never resized), and the video is then one pixel larger on that
    side. Nothing else about the request is changed. H.264 is lossy: reading the file back gives frames
    close to, not equal to, `frames`. The parent directory is created if missing; the file is written
    atomically. Returns `path` as a `Path`.
    """
    frames = check_frames(frames)
    if isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0:
        raise VideoError(f"fps must be a positive int, got {fps!r}")
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise VideoError(f"write_mp4 writes .mp4 files, got path {str(path)!r}")

    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        logger.info("padding %dx%d frames by edge replication to %dx%d: yuv420p needs even sides",
                    frames.shape[1], frames.shape[2], frames.shape[1] + pad_h, frames.shape[2] + pad_w)
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    n_frames, height, width, _ = frames.shape

    with atomic_output(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            quality=None, output_params=["-crf", str(_CRF)],
            macro_block_size=1,  # sides are already even; the default (16) would make ffmpeg rescale
            ffmpeg_log_level="error",
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in frames:  # [H, W, 3]
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()  # flushes and waits for ffmpeg
        # write_frames does not check ffmpeg's exit status: count the frames that reached the file.
        written, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp))
        if written != n_frames:
            raise OSError(f"ffmpeg wrote {written} of {n_frames} frames for {str(path)!r}")
    logger.info("wrote %s: %d frames %dx%d at %d fps", path, n_frames, height, width, fps)
    return path


def read_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """Decode every frame of the video at `path` -> (uint8 [F, H, W, 3] RGB, fps).

    fps is what the container reports (0.0 when it reports none). A missing, undecodable or frameless
    file raises `VideoError` naming `path`.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video {str(path)!r} does not exist or is not a file")
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        try:
            meta = next(reader)
            width, height = meta["size"]
            frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
        finally:
            reader.close()  # stops ffmpeg
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        reason = str(err).strip().splitlines()
        raise VideoError(f"cannot decode video {str(path)!r}: {' | '.join(reason[-3:])}") from err
    if not frames:
        raise VideoError(f"video {str(path)!r} contains no frames")
    return np.stack(frames), float(meta["fps"])  # [F, H, W, 3]
