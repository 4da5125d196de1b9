"""Example scenes for the demo: small procedural pictures (sky, ground, a few solid objects) drawn with PIL, so
the demo has something to predict from without any file. Each is a name, a picture and a question."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = (256, 192)  # width, height
SKY, GROUND = (200, 220, 240), (150, 110, 70)
HORIZON = 150  # ground starts at this row


@dataclass(frozen=True)
class Scene:
    name: str
    prompt: str
    shapes: tuple[tuple[str, tuple[int, int, int, int], tuple[int, int, int]], ...]  # (kind, box, colour)

    def image(self) -> Image.Image:
        img = Image.new("RGB", SIZE, SKY)
        draw = ImageDraw.Draw(img)
        draw.rectangle((0, HORIZON, SIZE[0], SIZE[1]), fill=GROUND)
        for kind, box, colour in self.shapes:
            if kind == "ball":
                draw.ellipse(box, fill=colour)
            elif kind == "box":
                draw.rectangle(box, fill=colour)
            else:  # a ramp: the triangle under the box's diagonal
                x0, y0, x1, y1 = box
                draw.polygon([(x0, y1), (x1, y1), (x0, y0)], fill=colour)
        return img


SCENES = (
    Scene("ball rolls toward a box", "The red ball rolls to the right. What happens next?",
          (("ball", (40, 118, 72, 150), (220, 40, 40)), ("box", (170, 100, 220, 150), (40, 90, 200)))),
    Scene("ball at the top of a ramp", "The ball is released. What happens next?",
          (("ramp", (20, 70, 150, 150), (120, 120, 120)), ("ball", (24, 44, 50, 70), (230, 160, 30)))),
    Scene("leaning tower of blocks", "Will the tower fall? What happens next?",
          (("box", (110, 120, 150, 150), (40, 160, 80)), ("box", (118, 90, 158, 120), (200, 60, 160)),
           ("box", (128, 60, 168, 90), (40, 90, 200)))),
)


def write_scenes(directory: Path) -> list[tuple[Path, str]]:
    """Each scene as `directory/<n>.png`; returns (path, prompt) pairs in order."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i, scene in enumerate(SCENES):
        path = directory / f"scene-{i}.png"
        scene.image().save(path)
        out.append((path, scene.prompt))
    return out
