"""Small charts drawn with PIL (ComfyUI ships Pillow; no plotting library needed)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

BG, FG, GRID = (24, 24, 28), (225, 225, 230), (60, 60, 68)
COLORS = [(90, 170, 255), (255, 150, 70), (120, 220, 120), (230, 100, 160)]


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return str(v)
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.1e}"


def _panel(draw, box, series: list[tuple[str, list[float], list[float], tuple]], title: str,
           hlines: list[tuple[float, tuple, str]] = (), logy: bool = False) -> None:
    x0, y0, x1, y1 = box
    font = _font()
    draw.text((x0, y0 - 18), title, fill=FG, font=font)
    draw.rectangle(box, outline=GRID)
    xs_all = [x for _n, xs, _ys, _c in series for x in xs]
    ys_all = [y for _n, _xs, ys, _c in series for y in ys if math.isfinite(y)] + [h for h, _c, _l in hlines]
    if not xs_all or not ys_all:
        draw.text((x0 + 10, y0 + 10), "no data yet", fill=FG, font=font)
        return
    tf = (lambda v: math.log10(max(v, 1e-12))) if logy else (lambda v: v)
    lo, hi = min(map(tf, ys_all)), max(map(tf, ys_all))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    xmin, xmax = min(xs_all), max(max(xs_all), min(xs_all) + 1)

    def px(x, y):
        return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0), y1 - (tf(y) - lo) / (hi - lo) * (y1 - y0))

    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = y1 - (y1 - y0) * i / 4
        draw.line([(x0, y), (x1, y)], fill=GRID)
        draw.text((x0 + 3, y - 14), _fmt(10**v if logy else v), fill=(150, 150, 160), font=font)
    for value, color, label in hlines:
        _a, y = px(xmin, value)
        for xd in range(int(x0), int(x1), 10):
            draw.line([(xd, y), (min(xd + 5, x1), y)], fill=color)
        draw.text((x1 - 120, y - 15), label, fill=color, font=font)
    for k, (name, xs, ys, color) in enumerate(series):
        pts = [px(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        elif pts:
            draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=color)
        draw.text((x0 + 8 + 150 * k, y1 + 4), name, fill=color, font=font)
    draw.text((x1 - 60, y1 + 4), f"step {int(xmax)}", fill=(150, 150, 160), font=font)


def _ema(values: list[float], alpha: float = 0.1) -> list[float]:
    out, acc = [], None
    for v in values:
        if not math.isfinite(v):
            out.append(float("nan"))
            continue
        acc = v if acc is None else (1 - alpha) * acc + alpha * v
        out.append(acc)
    return out


def training_plot(history, m_star: dict[str, float], title: str, width: int = 720, height: int = 440) -> Image.Image:
    """Loss (raw and smoothed, log scale) and each encoder's mean row norm against its m*."""
    img = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(img)
    draw.text((12, 6), title, fill=FG, font=_font(15))
    steps = [r.step for r in history]
    losses = [r.loss for r in history]
    _panel(draw, (50, 48, width - 16, height // 2 - 6),
           [("loss", steps, losses, (110, 110, 130)), ("loss (EMA)", steps, _ema(losses), COLORS[0])],
           "denoising loss", logy=all(v > 0 for v in losses if math.isfinite(v)) and bool(losses))
    series, lines = [], []
    for i, key in enumerate(m_star):
        c = COLORS[(i + 1) % len(COLORS)]
        series.append((f"‖e‖ {key}", steps, [r.norms.get(key, float("nan")) for r in history], c))
        lines.append((m_star[key], c, f"m* {key} {_fmt(m_star[key])}"))
    _panel(draw, (50, height // 2 + 40, width - 16, height - 26), series, "row norm per encoder", hlines=lines)
    return img


def norm_histogram(sorted_norms: torch.Tensor, marks: list[tuple[str, float]], title: str,
                   width: int = 640, height: int = 300, bins: int = 60) -> Image.Image:
    """The vocabulary's norm histogram with vertical marks (m*, the embedding's rows)."""
    img = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(img)
    font = _font()
    draw.text((10, 6), title, fill=FG, font=_font(15))
    norms = sorted_norms.double().numpy()
    values = [v for _l, v in marks]
    lo = float(min(norms.min(), *values)) if values else float(norms.min())
    hi = float(max(norms.max(), *values)) if values else float(norms.max())
    log_x = hi / max(lo, 1e-12) > 20  # TI rows far out: a log axis keeps the vocabulary visible
    tf = (lambda v: math.log10(max(v, 1e-12))) if log_x else (lambda v: v)
    a, b = tf(lo), tf(hi)
    span = max(b - a, 1e-9)
    a, b = a - span * 0.03, b + span * 0.03
    x0, y0, x1, y1 = 40, 34, width - 14, height - 40
    edges = np.linspace(a, b, bins + 1)
    counts, _ = np.histogram(np.vectorize(tf)(norms), bins=edges)
    top = max(int(counts.max()), 1)
    bw = (x1 - x0) / bins
    for i, c in enumerate(counts):
        if c:
            h = (y1 - y0) * c / top
            draw.rectangle([x0 + i * bw, y1 - h, x0 + (i + 1) * bw - 1, y1], fill=(80, 90, 110))
    draw.line([(x0, y1), (x1, y1)], fill=GRID)
    for t in np.linspace(a, b, 5):
        x = x0 + (t - a) / (b - a) * (x1 - x0)
        draw.text((x - 14, y1 + 4), _fmt(10**t if log_x else t), fill=(150, 150, 160), font=font)
    draw.text((x1 - 160, y1 + 20), "row norm" + (" (log scale)" if log_x else ""), fill=(150, 150, 160), font=font)
    for i, (label, v) in enumerate(marks):
        x = x0 + (tf(v) - a) / (b - a) * (x1 - x0)
        c = COLORS[i % len(COLORS)]
        draw.line([(x, y0), (x, y1)], fill=c, width=2)
        draw.text((min(x + 4, x1 - 150), y0 + 4 + 16 * i), f"{label} {_fmt(v)}", fill=c, font=font)
    return img


def to_image_tensor(*images: Image.Image) -> torch.Tensor:
    """PIL images (same size) → ComfyUI IMAGE [B, H, W, 3] in 0..1."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays))


def stack_vertically(images: list[Image.Image]) -> Image.Image:
    width = max(im.width for im in images)
    out = Image.new("RGB", (width, sum(im.height for im in images)), BG)
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height
    return out


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """One ComfyUI image [H, W, C] (or [1, H, W, C]) in 0..1 → PIL, rounded as SaveImage does."""
    if image.ndim == 4:
        image = image[0]
    array = np.clip(255.0 * image[..., :3].float().cpu().numpy(), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def with_frame(chart: Image.Image, frame: torch.Tensor | None, caption: str = "") -> Image.Image:
    """The chart with a sample frame beside it, scaled to the chart's height (the chart alone without one)."""
    if frame is None:
        return chart
    picture = tensor_to_pil(frame)
    scale = chart.height / picture.height
    picture = picture.resize((max(1, round(picture.width * scale)), chart.height), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (chart.width + picture.width, chart.height), BG)
    out.paste(chart, (0, 0))
    out.paste(picture, (chart.width, 0))
    if caption:
        draw = ImageDraw.Draw(out)
        draw.rectangle([chart.width, 0, chart.width + 8 + 7 * len(caption), 20], fill=BG)
        draw.text((chart.width + 4, 3), caption, fill=FG, font=_font())
    return out
