"""The pack's front-end extension in real headless Chromium against a real ComfyUI server.

Starts ComfyUI (main.py) on 127.0.0.1 with the pack and a test-only loader pack in a temporary
base directory, opens its front end, loads the shipped example workflows (checkpoint loader
swapped for tiny models), queues them through the front end, and checks what the user sees: the
live chart on DTI Train and the Inspector's report on its node. Screenshots are kept in
tests/artifacts/. Skipped when Chromium or a ComfyUI workspace is missing.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
import browser as br  # noqa: E402
import tiny_comfy  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
COMFY = tiny_comfy.find_comfyui()
CHROMIUM = br.find_chromium()

pytestmark = [
    pytest.mark.skipif(COMFY is None, reason=tiny_comfy.SKIP_REASON),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (Debian: apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("comfy_harness")
    srv = br.ComfyServer(COMFY)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def workflows(server):
    """The shipped examples as the test server runs them: tiny loader, small sizes, the user's files."""
    import safetensors.torch
    import torch

    tiny_comfy.import_comfy(COMFY)
    import comfy_harness  # noqa: F401  (registers nothing here; only the conversion helpers are used)
    import workflow_tools as wt
    from comfy_harness import register_test_nodes  # noqa: F401

    # Widget order comes from node definitions: load them in this process too.
    wt._load_comfy_with_pack()
    g = torch.Generator().manual_seed(0)
    for name, width in (("my_concept", None),):
        rows = {"clip_l": torch.randn(1, 32, generator=g), "clip_g": torch.randn(1, 48, generator=g)}
        safetensors.torch.save_file({k: v / v.norm() * 0.11 for k, v in rows.items()}, str(server.embeddings / f"{name}.safetensors"))
        del width
    safetensors.torch.save_file({"clip_l": torch.randn(1, 32) * 3, "clip_g": torch.randn(1, 48) * 3},
                                str(server.embeddings / "my_ti_embedding.safetensors"))
    photos = server.base / "input" / "my_concept"
    photos.mkdir(exist_ok=True)
    from PIL import Image

    for i in range(3):
        Image.fromarray((torch.rand(64, 64, 3, generator=g).numpy() * 255).astype("uint8")).save(photos / f"p{i}.png")
    out = {}
    for name in ("dti_train_sdxl", "dti_inspect_ti_vs_dti"):
        wf = json.loads((wt.WORKFLOWS / f"{name}.json").read_text())
        wf = wt.swap_loaders(wf)
        wt.set_train_widgets(wf, steps=8, resolution=64, batch_size=2)
        wt.set_widgets(wf, "EmptyLatentImage", width=64, height=64)
        wt.set_widgets(wf, "KSampler", steps=2)
        out[name] = (wf, wt.to_api(wf))
    return out


def run(coro):
    return asyncio.run(coro)


def test_pack_loads_in_the_server_without_import_failures(server):
    assert not [f for f in server.import_failures() if "DTI" in f or "dti" in f]


def test_live_chart_and_summary_on_dti_train(server, workflows):
    wf, api = workflows["dti_train_sdxl"]
    train_id = next(k for k, v in api.items() if v["class_type"] == "DTITrainConcept")

    async def scenario():
        async with br.Browser(CHROMIUM) as b:
            await br.open_comfy(b, server)
            assert await br.load_graph(b, wf, scale=0.62) == len(wf["nodes"])
            # the front end turns the workflow into the same prompt as the tests' converter
            front = await b.evaluate("window.app.graphToPrompt().then(p => p.output)")
            assert {k: v["class_type"] for k, v in front.items()} == {k: v["class_type"] for k, v in api.items()}
            for k, v in api.items():
                for name, value in v["inputs"].items():
                    assert front[k]["inputs"][name] == value, (k, name)
            # DOM widgets are attached on the next frame
            await b.wait_for(f"document.querySelector('[data-dti-chart=\"{train_id}\"]') !== null", 10, "the chart widget")
            await b.evaluate("window.app.queuePrompt(0, 1)")
            await b.wait_for(f"(window.__comfyui_dti.reports['{train_id}'] || '').includes('8 steps')", 180, "training to finish")
            points = await b.evaluate(f"document.querySelector('[data-dti-chart=\"{train_id}\"]').dataset.points")
            data = await b.evaluate(f"window.__comfyui_dti.train['{train_id}']")
            await asyncio.sleep(1.0)
            shot = await b.screenshot(ARTIFACTS / "web_dti_train.png")
            return points, data, shot

    points, data, shot = run(scenario())
    assert points == "8" and data["step"] == list(range(1, 9))
    assert set(data["norms"]) == {"clip_l", "clip_g"}
    for key in ("clip_l", "clip_g"):
        assert all(abs(n / data["mStar"][key] - 1) < 1e-5 for n in data["norms"][key])
    assert shot.stat().st_size > 20_000


def test_preview_frame_is_drawn_beside_the_chart(server, workflows):
    """With previews on, each new sample frame reaches the node and is drawn beside the live chart."""
    import workflow_tools as wt

    wf = json.loads(json.dumps(workflows["dti_train_sdxl"][0]))
    wt.set_train_widgets(wf, steps=4, name="web_preview", preview_every=2, preview_width=64, preview_height=64,
                         preview_steps=2, if_exists="overwrite")
    api = wt.to_api(wf)
    train_id = next(k for k, v in api.items() if v["class_type"] == "DTITrainConcept")
    canvas = f"document.querySelector('[data-dti-chart=\"{train_id}\"]')"

    async def scenario():
        async with br.Browser(CHROMIUM) as b:
            await br.open_comfy(b, server)
            await br.load_graph(b, wf, scale=0.62)
            await b.wait_for(f"{canvas} !== null", 10, "the chart widget")
            await b.evaluate("window.app.queuePrompt(0, 1)")
            await b.wait_for(f"{canvas}.dataset.frameStep === '4'", 180, "the frame of the last step")
            width = await b.evaluate(f"{canvas}.width")
            frame = await b.evaluate(f"window.__comfyui_dti.train['{train_id}'].frame.img.naturalWidth")
            await asyncio.sleep(1.0)
            shot = await b.screenshot(ARTIFACTS / "web_dti_preview.png")
            return width, frame, shot

    width, frame, shot = run(scenario())
    assert frame == 64  # the 64 px frame, sent as a JPEG data URL
    assert width > 420  # the canvas grew by the frame's width: chart and frame side by side
    assert shot.stat().st_size > 20_000


def test_inspector_report_is_rendered_on_its_node(server, workflows):
    wf, api = workflows["dti_inspect_ti_vs_dti"]
    inspector_ids = [k for k, v in api.items() if v["class_type"] == "DTINormInspector"]

    async def scenario():
        async with br.Browser(CHROMIUM) as b:
            await br.open_comfy(b, server)
            await br.load_graph(b, wf, scale=0.6)
            await b.evaluate("window.app.queuePrompt(0, 1)")
            cond = " && ".join(f"window.__comfyui_dti.reports['{i}']" for i in inspector_ids)
            await b.wait_for(f"!!({cond})", 120, "both inspector reports")
            texts = [await b.evaluate(f"document.querySelector('[data-dti-report=\"{i}\"]').textContent") for i in inspector_ids]
            await asyncio.sleep(1.0)
            await b.screenshot(ARTIFACTS / "web_dti_inspector.png")
            return texts

    ti_text, dti_text = run(scenario())
    assert "OUT OF distribution" in ti_text and "nearest by cosine" in ti_text
    assert "IN distribution" in dti_text
