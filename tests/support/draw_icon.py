"""Draw web/icon.png, the pack's icon in the Comfy Registry and ComfyUI-Manager: the unit sphere DTI
trains on, a great circle on it, and the arc a slerp walks between two concepts.

    python tests/support/draw_icon.py

Drawn at 4x and downscaled, so edges are smooth without any drawing library beyond Pillow.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 256  # the registry asks for a square icon of at most 400 px
ICON = Path(__file__).resolve().parents[2] / "web" / "icon.png"
BACKGROUND = (24, 24, 28)
ARC = (90, 170, 255)
POINTS = ((255, 150, 70), (120, 220, 120))


def sphere(size: int, radius: float) -> Image.Image:
    """A Lambert-shaded ball lit from the upper left, as RGBA with the ball's disc as alpha."""
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    nx, ny = (x - c) / radius, (y - c) / radius
    r2 = nx**2 + ny**2
    nz = np.sqrt(np.clip(1 - r2, 0, 1))
    light = np.array([-0.45, -0.55, 0.70])
    light /= np.linalg.norm(light)
    lambert = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0, 1)
    shade = 0.18 + 0.82 * lambert
    base = np.array([78, 92, 138], dtype=np.float64)
    rgb = base[None, None, :] * shade[..., None] + 60 * lambert[..., None] ** 12  # a soft highlight
    alpha = np.clip((1 - np.sqrt(r2)) * radius, 0, 1)  # one pixel of edge anti-aliasing
    rgba = np.dstack([np.clip(rgb, 0, 255), alpha * 255]).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def great_circle(radius: float, tilt: float, turn: float, n: int = 720) -> list[tuple[float, float, float]]:
    """Points (x, y, z) of the great circle whose plane is tilted from the view by ``tilt`` and turned by ``turn``."""
    u = np.array([math.cos(turn), math.sin(turn), 0.0])
    v = np.array([-math.sin(turn) * math.cos(tilt), math.cos(turn) * math.cos(tilt), math.sin(tilt)])
    return [tuple(radius * (math.cos(t) * u + math.sin(t) * v)) for t in np.linspace(0, 2 * math.pi, n)]


def draw(size: int = SIZE) -> Image.Image:
    big = size * 4
    img = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([0, 0, big - 1, big - 1], radius=big // 6, fill=BACKGROUND + (255,))
    radius = big * 0.36
    c = big / 2
    img.alpha_composite(sphere(big, radius))
    pts = great_circle(radius, tilt=math.radians(62), turn=math.radians(-25))
    xy = [(c + p[0], c + p[1]) for p in pts]
    front = [p[2] >= 0 for p in pts]
    w = big // 96
    for i in range(len(pts) - 1):  # the far half faint, the near half bright
        colour = ARC + ((255,) if front[i] else (70,))
        d.line([xy[i], xy[i + 1]], fill=colour, width=w if front[i] else w // 2)
    # the slerp: a bold stretch of the near half between two concepts
    near = [i for i in range(len(pts)) if front[i]]
    a, b = near[len(near) // 5], near[len(near) * 4 // 5]
    d.line(xy[a:b + 1], fill=(235, 240, 255, 255), width=w * 2, joint="curve")
    for idx, colour in zip((a, b), POINTS):
        x, y = xy[idx]
        r = big * 0.035
        d.ellipse([x - r, y - r, x + r, y + r], fill=colour + (255,), outline=BACKGROUND + (255,), width=w)
    return img.resize((size, size), Image.LANCZOS)


def main() -> None:
    draw().save(ICON, optimize=True)
    print("wrote", ICON, ICON.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
