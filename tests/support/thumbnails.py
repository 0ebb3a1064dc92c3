"""Regenerate workflows/*.jpg: each example workflow as it looks in ComfyUI's own front end.

    python tests/support/thumbnails.py

Starts ComfyUI on 127.0.0.1 with the pack, gives it empty stand-ins for the model and embedding
files the examples name (so no combo shows as missing), loads each workflow in headless Chromium
and saves a JPEG screenshot next to the JSON.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser as br  # noqa: E402
import tiny_comfy  # noqa: E402
from PIL import Image  # noqa: E402

WORKFLOWS = tiny_comfy.PACK_ROOT / "workflows"
NAMED_FILES = {
    "models/checkpoints": ["sd_xl_base_1.0.safetensors", "lumina_2.safetensors", "sd3.5_medium.safetensors"],
    "models/diffusion_models": ["flux1-dev.safetensors"],
    "models/text_encoders": ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"],
    "models/vae": ["ae.safetensors"],
    "models/embeddings": ["my_concept.safetensors", "concept_a.safetensors", "concept_b.safetensors",
                          "my_ti_embedding.safetensors"],
    "models/clip_vision": ["CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"],
}


async def shoot(server: br.ComfyServer, names: list[str]) -> None:
    async with br.Browser(br.find_chromium(), width=1800, height=1000) as b:
        await br.open_comfy(b, server)
        for name in names:
            wf = json.loads((WORKFLOWS / f"{name}.json").read_text())
            await br.load_graph(b, wf)
            await asyncio.sleep(1.0)
            await br.fit_view(b)
            await asyncio.sleep(1.0)
            await b.evaluate("document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click()); true")
            png = WORKFLOWS / f".{name}.png"
            await b.screenshot(png)
            img = Image.open(io.BytesIO(png.read_bytes())).convert("RGB")
            png.unlink()
            img.thumbnail((1200, 800))
            img.save(WORKFLOWS / f"{name}.jpg", quality=82)
            print("wrote", WORKFLOWS / f"{name}.jpg")


def main() -> None:
    extra = tiny_comfy.extramodels_path()
    server = br.ComfyServer(tiny_comfy.find_comfyui(), extra_nodes=(extra,) if extra else ())
    for folder, files in NAMED_FILES.items():
        (server.base / folder).mkdir(parents=True, exist_ok=True)
        for f in files:
            (server.base / folder / f).write_bytes(b"")
    (server.base / "input" / "my_concept").mkdir(exist_ok=True)
    server.start()
    try:
        names = sys.argv[1:] or sorted(p.stem for p in WORKFLOWS.glob("*.json"))
        asyncio.run(shoot(server, names))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
