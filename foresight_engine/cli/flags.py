"""Errors in the user's own words. The engine's messages name its Python arguments (`num_frames=10 must be of
the form 4*k+1`); the CLI names the flags that set them (`--frames 10 must be ...`). Each subcommand declares
its mapping with `set_defaults(flags={api_name: flag})`; the API's argument names stay as they are.

Rules, in order: an inline `name=value` becomes `flag value`; a message that starts with `name` (its subject:
`prompt must be ...`, `image[1]: cannot decode ...`) starts with the flag instead; an error whose `argument`
maps to a flag the message does not mention yet gets the flag in front (`--engine art/none: not an artifact
directory`).
"""
from __future__ import annotations

import argparse
import re
from typing import Mapping

# The request settings of `Engine.predict`, spelled as `predict`/`ui` spell them.
REQUEST_FLAGS = {
    "num_frames": "--frames", "height": "--height", "width": "--width", "num_inference_steps": "--steps",
    "guidance_scale": "--guidance", "max_new_tokens": "--max-new-tokens", "seed": "--seed", "frame_rate": "--fps",
    "prompt": "--prompt", "actual": "--actual", "directory": "--engine", "preset": "--preset", "device": "--device",
}


def flags_of(args: argparse.Namespace) -> dict[str, str]:
    """The subcommand's mapping, plus `image[i]` -> `--image PATH` for the images it was given."""
    flags = dict(getattr(args, "flags", None) or {})
    for i, path in enumerate(getattr(args, "image", None) or []):
        flags[f"image[{i}]"] = f"--image {path}"
    return flags


def in_flags(exc: BaseException, flags: Mapping[str, str]) -> str:
    """`exc`'s message with the API's argument names replaced by `flags` (see the module docstring)."""
    message = str(exc)
    for name, flag in flags.items():
        message = re.sub(rf"(?<![\w.\[-]){re.escape(name)}=", f"{flag} ", message)
        message = re.sub(rf"^{re.escape(name)}(?=[\s:,]|$)", flag, message)
    flag = flags.get(getattr(exc, "argument", None) or "")
    if flag and flag not in message:
        message = f"{flag} {message}"
    return message
