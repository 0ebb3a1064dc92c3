"""The pack's front-end extension in real headless Chromium against a real ComfyUI server, once per
front end: the one ComfyUI v0.3.64 pins (1.27.x) and the newest series users run (1.58.x, installed
into a cache folder on first use; see tests/support/frontends.py).

Starts ComfyUI (main.py) on 127.0.0.1 with the pack and a test-only loader pack in a temporary
base directory and opens its front end. Every shipped example workflow must load with all its node
types known and web/dti.js attached; two of them are queued through the front end (checkpoint
loader swapped for tiny models) to check what the user sees: the live chart on DTI Train and the
Inspector's report on its node. Before each screenshot the tests assert that no dialog is open and
the graph canvas is what shows. Screenshots are kept in tests/artifacts/ (not committed).
Skipped when Chromium or a ComfyUI workspace is missing; the 1.58 runs skip when that front end
cannot be installed (no network).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
import browser as br  # noqa: E402
import frontends  # noqa: E402
import tiny_comfy  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
COMFY = tiny_comfy.find_comfyui()
CHROMIUM = br.find_chromium()
EXAMPLES = sorted(p.stem for p in tiny_comfy.PACK_ROOT.glob("workflows/*.json"))
# Model files the examples name: empty stand-ins, so no combo shows a missing-model warning on load.
STAND_INS = {"models/checkpoints": ["sd_xl_base_1.0.safetensors", "lumina_2.safetensors"],
             "models/embeddings": ["concept_a.safetensors", "concept_b.safetensors"]}
NEEDS_EXTRAMODELS = {"dti_train_sana"}

pytestmark = [
    pytest.mark.skipif(COMFY is None, reason=tiny_comfy.SKIP_REASON),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (Debian: apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def converted():
    """The two examples the tests queue, as the test server runs them: tiny loaders, small sizes."""
    pytest.importorskip("comfy_harness")
    tiny_comfy.import_comfy(COMFY)
    import workflow_tools as wt

    # Widget order comes from node definitions: load them in this process too.
    wt._load_comfy_with_pack()
    out = {}
    for name in ("dti_train_sdxl", "dti_inspect_ti_vs_dti"):
        wf = json.loads((wt.WORKFLOWS / f"{name}.json").read_text())
        wf = wt.swap_loaders(wf)
        wt.set_train_widgets(wf, steps=8, resolution=64, batch_size=2)
        wt.set_widgets(wf, "EmptyLatentImage", width=64, height=64)
        wt.set_widgets(wf, "KSampler", steps=2)
        out[name] = (wf, wt.to_api(wf))
    return out


@pytest.fixture(scope="module")
def servers():
    """One ComfyUI per front end, all launched at once so they boot side by side; a front end that
    cannot be installed maps to the reason instead."""
    extra = tiny_comfy.extramodels_path(COMFY)
    out: dict[str, br.ComfyServer | str] = {}
    for front in frontends.ALL:
        try:
            front_end_root, version = frontends.ensure(front)
        except RuntimeError as e:
            out[front.name] = f"front end {front.name}: {e}"
            continue
        srv = br.ComfyServer(COMFY, extra_nodes=(extra,) if extra else (), front_end_root=front_end_root)
        srv.front, srv.front_version, srv.has_extramodels = front.name, version, extra is not None
        _write_user_files(srv)
        out[front.name] = srv.launch()
    yield out
    for srv in out.values():
        if isinstance(srv, br.ComfyServer):
            srv.stop()


@pytest.fixture(scope="module", params=frontends.ALL, ids=lambda f: f"frontend-{f.name}")
def server(request, servers):
    srv = servers[request.param.name]
    if isinstance(srv, str):
        pytest.skip(srv)
    return srv.wait_ready()


def _write_user_files(server: br.ComfyServer) -> None:
    """The files the examples name: real embeddings for the queued ones, photos, empty stand-ins."""
    import safetensors.torch
    import torch
    from PIL import Image

    for folder, files in STAND_INS.items():
        for f in files:
            (server.base / folder / f).write_bytes(b"")
    g = torch.Generator().manual_seed(0)
    rows = {"clip_l": torch.randn(1, 32, generator=g), "clip_g": torch.randn(1, 48, generator=g)}
    safetensors.torch.save_file({k: v / v.norm() * 0.11 for k, v in rows.items()}, str(server.embeddings / "my_concept.safetensors"))
    safetensors.torch.save_file({"clip_l": torch.randn(1, 32, generator=g) * 3, "clip_g": torch.randn(1, 48, generator=g) * 3},
                                str(server.embeddings / "my_ti_embedding.safetensors"))
    photos = server.base / "input" / "my_concept"
    photos.mkdir(exist_ok=True)
    for i in range(3):
        Image.fromarray((torch.rand(64, 64, 3, generator=g).numpy() * 255).astype("uint8")).save(photos / f"p{i}.png")


class Page:
    """One Chromium page kept open across a module's tests, on its own event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.browser = br.Browser(CHROMIUM)

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.browser.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture(scope="module")
def page(server):
    p = Page()
    p.run(p.browser.__aenter__())
    p.run(br.open_comfy(p.browser, server))
    yield p
    p.close()


async def forget_runs(b: br.Browser) -> None:
    """Empty what web/dti.js keeps of earlier runs on this page, so a wait cannot pass on an old report
    (node ids repeat across workflows). Emptied in place: the extension holds the same objects."""
    await b.evaluate("(() => { const s = window.__comfyui_dti; for (const d of [s.train, s.reports]) "
                     "for (const k of Object.keys(d)) delete d[k]; return true; })()")


# Whether what a run added to a node lies inside the node as drawn: the element's box (the pack's
# chart or report) within the node's box on the page, the node at least as large as its content
# (ComfyUI's image preview widget included), and, on a node with the pack's chart, no progress
# preview image of ComfyUI's drawn over or under it.
NODE_FIT = """(async () => {
  await new Promise(r => setTimeout(r, 500));
  const node = window.app.graph.getNodeById(%s), sel = %s;
  const c = window.app.canvas, ds = c.ds, cr = c.canvas.getBoundingClientRect();
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  const [x0, y0] = ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - title]);
  const [x1, y1] = ds.convertOffsetToCanvas([node.pos[0] + node.size[0], node.pos[1] + node.size[1]]);
  const box = {left: cr.left + x0, top: cr.top + y0, right: cr.left + x1, bottom: cr.top + y1};
  const outside = [...document.querySelectorAll(sel)].map(e => e.getBoundingClientRect())
    .filter(r => r.left < box.left - 2 || r.top < box.top - 2 || r.right > box.right + 2 || r.bottom > box.bottom + 2)
    .map(r => [r.left, r.top, r.right, r.bottom].map(Math.round));
  const want = node.computeSize();
  const previews = node.__dtiCanvas ? (node.imgs?.length || 0) + (node.widgets || []).filter(w => w.type === 'IMAGE_PREVIEW'
    || w.name === '$$canvas-image-preview').length : 0;
  return {outside, node: [box.left, box.top, box.right, box.bottom].map(Math.round), size: [...node.size].map(Math.round),
          content: [...want].map(Math.round), fits: node.size[1] + 1 >= want[1], previews};
})()"""


async def node_fit(b: br.Browser, node_id: str, selector: str) -> dict:
    return await b.evaluate(NODE_FIT % (json.dumps(int(node_id)), json.dumps(selector)))


def assert_fits(fit: dict, what: str) -> None:
    assert not fit["outside"], f"{what} reaches outside its node {fit['node']}: {fit['outside']}"
    assert fit["fits"], f"{what}: the node ({fit['size']}) is smaller than its content ({fit['content']})"
    assert fit["previews"] == 0, f"{what}: ComfyUI's progress preview is drawn beside the pack's chart"


def screenshot_path(server: br.ComfyServer, name: str) -> Path:
    return ARTIFACTS / f"web_{server.front}_{name}.png"


def test_pack_loads_in_the_server_without_import_failures(server):
    assert not [f for f in server.import_failures() if "DTI" in f or "dti" in f]


def test_page_runs_the_front_end_under_test(server, page):
    """--front-end-root is honoured: the page reports the version installed for this run."""
    if server.front_version is None:
        pytest.skip("the workspace's front-end package version is unknown to this Python")
    assert page.run(page.browser.evaluate("window.__COMFYUI_FRONTEND_VERSION__")) == server.front_version


def test_canvas_check_sees_the_templates_dialog(server, page):
    """The check before each screenshot must notice a dialog over the graph in this front end (1.58
    replaced the PrimeVue dialogs the first version of these tests closed), and dismissing must work."""
    b = page.browser

    async def scenario():
        await b.evaluate("window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        await b.wait_for(br.VISIBLE_DIALOGS + ".length > 0", 10, "the templates dialog")
        with pytest.raises(AssertionError, match="dialog covers the graph"):
            await br.assert_canvas_visible(b)
        covered = (await b.evaluate(br.CANVAS_COVER))["covered"]  # the second line of defence sees it too
        closed = await br.dismiss_dialogs(b)
        await br.assert_canvas_visible(b)
        return covered, closed

    covered, closed = page.run(scenario())
    assert covered and closed


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_workflow_loads_with_the_extension(server, page, name):
    """What a user sees on dragging a shipped example into the front end: every node known, the
    chart of web/dti.js on DTI Train, nothing covering the graph."""
    if name in NEEDS_EXTRAMODELS and not server.has_extramodels:
        pytest.skip("ComfyUI_ExtraModels is not installed beside ComfyUI")
    wf = json.loads((tiny_comfy.PACK_ROOT / "workflows" / f"{name}.json").read_text())
    b = page.browser

    async def scenario():
        assert await br.load_graph(b, wf) == len(wf["nodes"])
        await br.fit_view(b)
        graph = await b.evaluate("""(() => ({
          types: window.app.graph._nodes.map(n => n.type),
          unknown: window.app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type),
          charts: [...document.querySelectorAll('[data-dti-chart]')].map(e => e.dataset.dtiChart),
        }))()""")
        await br.assert_canvas_visible(b)
        shown = [await br.element_shows(b, f'[data-dti-chart="{i}"]') for i in graph["charts"]]
        await b.screenshot(screenshot_path(server, name))
        return graph, shown

    graph, shown = page.run(scenario())
    assert sorted(graph["types"]) == sorted(n["type"] for n in wf["nodes"])
    assert graph["unknown"] == [], f"node types the front end does not know: {graph['unknown']}"
    train_ids = sorted(str(n["id"]) for n in wf["nodes"] if n["type"] in ("DTITrainConcept", "DTITrain"))
    assert sorted(graph["charts"]) == train_ids  # the extension attached one chart per DTI Train, with its id
    assert all(shown), f"a chart is hidden or covered: {shown}"


def test_live_chart_and_summary_on_dti_train(server, page, converted):
    wf, api = converted["dti_train_sdxl"]
    train_id = next(k for k, v in api.items() if v["class_type"] == "DTITrainConcept")
    b = page.browser

    async def scenario():
        await forget_runs(b)
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
        await br.assert_canvas_visible(b)
        shown = await br.element_shows(b, f'[data-dti-chart="{train_id}"]')
        fit = await node_fit(b, train_id, f'[data-dti-chart="{train_id}"], [data-dti-report="{train_id}"]')
        shot = await b.screenshot(screenshot_path(server, "dti_train_run"))
        return points, data, shown, shot, fit

    points, data, shown, shot, fit = page.run(scenario())
    assert_fits(fit, "DTI Train's chart and summary")
    assert points == "8" and data["step"] == list(range(1, 9))
    assert set(data["norms"]) == {"clip_l", "clip_g"}
    for key in ("clip_l", "clip_g"):
        assert all(abs(n / data["mStar"][key] - 1) < 1e-5 for n in data["norms"][key])
    assert shown, "the live chart is not visible on the page"
    assert shot.stat().st_size > 20_000


def test_preview_frame_is_drawn_beside_the_chart(server, page, converted):
    """With previews on, each new sample frame reaches the node and is drawn beside the live chart."""
    import workflow_tools as wt

    wf = json.loads(json.dumps(converted["dti_train_sdxl"][0]))
    wt.set_train_widgets(wf, steps=4, name="web_preview", preview_every=2, preview_width=64, preview_height=64,
                         preview_steps=2, if_exists="overwrite")
    api = wt.to_api(wf)
    train_id = next(k for k, v in api.items() if v["class_type"] == "DTITrainConcept")
    canvas = f"document.querySelector('[data-dti-chart=\"{train_id}\"]')"
    b = page.browser

    async def scenario():
        await forget_runs(b)
        await br.load_graph(b, wf, scale=0.62)
        await b.wait_for(f"{canvas} !== null", 10, "the chart widget")
        await b.evaluate("window.app.queuePrompt(0, 1)")
        await b.wait_for(f"{canvas}.dataset.frameStep === '4'", 180, "the frame of the last step")
        width = await b.evaluate(f"{canvas}.width")
        frame = await b.evaluate(f"window.__comfyui_dti.train['{train_id}'].frame.img.naturalWidth")
        await asyncio.sleep(1.0)
        await br.assert_canvas_visible(b)
        fit = await node_fit(b, train_id, f'[data-dti-chart="{train_id}"], [data-dti-report="{train_id}"]')
        shot = await b.screenshot(screenshot_path(server, "dti_preview"))
        return width, frame, shot, fit

    width, frame, shot, fit = page.run(scenario())
    assert_fits(fit, "DTI Train's chart with its preview frame")
    assert frame == 64  # the 64 px frame, sent as a JPEG data URL
    assert width > 420  # the canvas grew by the frame's width: chart and frame side by side
    assert shot.stat().st_size > 20_000


def test_inspector_report_is_rendered_on_its_node(server, page, converted):
    wf, api = converted["dti_inspect_ti_vs_dti"]
    inspector_ids = [k for k, v in api.items() if v["class_type"] == "DTINormInspector"]
    b = page.browser

    async def scenario():
        await forget_runs(b)
        await br.load_graph(b, wf, scale=0.6)
        await b.evaluate("window.app.queuePrompt(0, 1)")
        cond = " && ".join(f"window.__comfyui_dti.reports['{i}']" for i in inspector_ids)
        await b.wait_for(f"!!({cond})", 120, "both inspector reports")
        await b.wait_for(" && ".join(f"!!document.querySelector('[data-dti-report=\"{i}\"]')" for i in inspector_ids), 10,
                         "the report widgets")
        texts = [await b.evaluate(f"document.querySelector('[data-dti-report=\"{i}\"]').textContent") for i in inspector_ids]
        await asyncio.sleep(1.0)
        await br.assert_canvas_visible(b)
        shown = [await br.element_shows(b, f'[data-dti-report="{i}"]') for i in inspector_ids]
        fits = [await node_fit(b, i, f'[data-dti-report="{i}"]') for i in inspector_ids]
        await b.screenshot(screenshot_path(server, "dti_inspector_run"))
        return texts, shown, fits

    (ti_text, dti_text), shown, fits = page.run(scenario())
    for i, fit in zip(inspector_ids, fits):
        assert_fits(fit, f"the report and histogram of Inspector {i}")
    assert "OUT OF distribution" in ti_text and "nearest by cosine" in ti_text
    assert "IN distribution" in dti_text
    assert all(shown), f"a report is hidden or covered: {shown}"
