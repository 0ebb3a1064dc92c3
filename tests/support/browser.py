"""Headless Chromium driven over the DevTools protocol (aiohttp only), and a real ComfyUI server
on 127.0.0.1 with the pack loaded, for front-end tests and workflow thumbnails."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import tiny_comfy

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                  "--no-first-run", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
TEST_NODES = Path(__file__).resolve().parent / "test_nodes_pack"


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """ComfyUI's main.py in a temporary base directory: the pack and the test nodes in custom_nodes."""

    def __init__(self, comfy_root: Path, python: str = sys.executable, extra_nodes: tuple[Path, ...] = (),
                 front_end_root: Path | None = None) -> None:
        self.root = comfy_root
        self.python = python
        self.front_end_root = front_end_root  # None: the front end the workspace pins
        self.base = Path(tempfile.mkdtemp(prefix="dti-comfy-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        for d in ("custom_nodes", "models/embeddings", "models/checkpoints", "input", "output", "temp", "user"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        (self.base / "custom_nodes" / "ComfyUI-DTI").symlink_to(tiny_comfy.PACK_ROOT)
        (self.base / "custom_nodes" / "dti_test_nodes").symlink_to(TEST_NODES)
        for extra in extra_nodes:
            (self.base / "custom_nodes" / extra.name).symlink_to(extra)
        self.log = self.base / "server.log"

    @property
    def embeddings(self) -> Path:
        return self.base / "models" / "embeddings"

    def launch(self) -> ComfyServer:
        """Start main.py without waiting for it (several servers can boot side by side)."""
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--disable-auto-launch", "--disable-metadata"]
        if self.front_end_root is not None:
            cmd += ["--front-end-root", str(self.front_end_root)]
        env = dict(os.environ, DTI_TEST_SUPPORT=str(Path(__file__).resolve().parent))
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env)
        return self

    def wait_ready(self, timeout: float = 120) -> ComfyServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/object_info/DTITrainConcept", timeout=2) as r:
                    if r.status == 200 and b"DTITrainConcept" in r.read():
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer on {self.url}:\n{self.log.read_text()[-3000:]}")

    def start(self, timeout: float = 120) -> ComfyServer:
        return self.launch().wait_ready(timeout)

    def import_failures(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if "IMPORT FAILED" in line]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.base, ignore_errors=True)


class Browser:
    """One headless Chromium page, driven with Runtime.evaluate and Page.captureScreenshot."""

    def __init__(self, executable: str, width: int = 1600, height: int = 1000) -> None:
        self.executable, self.width, self.height = executable, width, height
        self.profile = tempfile.mkdtemp(prefix="dti-chromium-")
        self.proc: subprocess.Popen | None = None
        self.session = None
        self.ws = None
        self._id = 0
        self.console: list[str] = []

    async def __aenter__(self) -> Browser:
        cmd = [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
               f"--window-size={self.width},{self.height}", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        for _ in range(200):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        import aiohttp  # ComfyUI's dependency: present wherever these tests can run

        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.call("Page.enable")
        await self.call("Runtime.enable")
        await self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1,
                        mobile=False)
        return self

    async def __aexit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)

    async def call(self, method: str, **params):
        self._id += 1
        my_id = self._id
        await self.ws.send_str(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def evaluate(self, expression: str):
        res = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page error: {res['exceptionDetails'].get('exception', {}).get('description', res)}")
        return res.get("result", {}).get("value")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def wait_for(self, expression: str, timeout: float = 60, what: str = "") -> object:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = await self.evaluate(expression)
                if last:
                    return last
            except RuntimeError:
                pass
            await asyncio.sleep(0.25)
        raise TimeoutError(f"timed out waiting for {what or expression} (last value {last!r}); console: {self.console[-10:]}")

    async def screenshot(self, path: Path, fmt: str = "png", quality: int = 85) -> Path:
        params = {"format": fmt}
        if fmt == "jpeg":
            params["quality"] = quality
        data = await self.call("Page.captureScreenshot", **params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path


LOAD_GRAPH = """(async () => {
  const wf = %s;
  await window.app.loadGraphData(wf, true, true, null, {showMissingModelsDialog: false, showMissingNodesDialog: false});
  window.app.canvas.ds.scale = %s; window.app.canvas.ds.offset = [%s, %s];
  window.app.canvas.setDirty(true, true);
  return window.app.graph._nodes.length;
})()"""


# Dialogs as both front-end generations build them: PrimeVue (.p-dialog) up to 1.2x, role=dialog later.
VISIBLE_DIALOGS = """(() => [...document.querySelectorAll('[role=dialog], [role=alertdialog], .p-dialog, .p-dialog-mask')]
  .filter(e => {
    const r = e.getBoundingClientRect(), s = getComputedStyle(e);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none' && e.dataset.state !== 'closed';
  })
  .map(e => ((e.getAttribute('aria-label') || e.innerText || e.className) + '').trim().split('\\n')[0].slice(0, 60)))()"""

# What the page shows at a grid of points over the graph canvas: the canvas itself, or what covers it.
CANVAS_COVER = """(() => {
  const c = window.app.canvas.canvas, r = c.getBoundingClientRect(), seen = [];
  for (const fx of [0.2, 0.5, 0.8]) for (const fy of [0.25, 0.5, 0.75]) {
    const e = document.elementFromPoint(r.left + fx * r.width, r.top + fy * r.height);
    if (!e || e === c || e.closest('.dom-widget, [data-dti-chart], [data-dti-report]') || c.parentElement.contains(e)) continue;
    seen.push(e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ' ' + ((e.closest('[role=dialog], .p-dialog') || e).innerText || '')
      .trim().split('\\n')[0].slice(0, 40));
  }
  return {width: r.width, height: r.height, covered: seen};
})()"""


async def press_escape(browser: Browser) -> None:
    for kind in ("keyDown", "keyUp"):
        await browser.call("Input.dispatchKeyEvent", type=kind, key="Escape", code="Escape", windowsVirtualKeyCode=27)


async def dismiss_dialogs(browser: Browser, timeout: float = 10) -> list[str]:
    """Close every open dialog (close button, then Escape) until none is left; the titles it closed.
    Raises TimeoutError naming the dialogs that stay open."""
    closed: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        open_now = await browser.evaluate(VISIBLE_DIALOGS)
        if not open_now:
            return closed
        if time.monotonic() > deadline:
            raise TimeoutError(f"dialogs stay open over the graph: {open_now}")
        closed += [t for t in open_now if t not in closed]
        await browser.evaluate("document.querySelectorAll('.p-dialog-close-button, [role=dialog] button[aria-label=Close]')"
                               ".forEach(b => b.click()); true")
        await press_escape(browser)
        await asyncio.sleep(0.3)


async def assert_canvas_visible(browser: Browser) -> None:
    """Fail unless no dialog is open and the graph canvas (or a node's own widget) is what shows
    across the page: the check a screenshot's size cannot make."""
    dialogs = await browser.evaluate(VISIBLE_DIALOGS)
    assert not dialogs, f"a dialog covers the graph: {dialogs}"
    view = await browser.evaluate(CANVAS_COVER)
    assert view["width"] > 0.5 * browser.width and view["height"] > 0.5 * browser.height, f"the graph canvas is small: {view}"
    assert not view["covered"], f"something covers the graph canvas: {view['covered']}"


async def element_shows(browser: Browser, selector: str) -> bool:
    """Whether the element is on the page with an area and is what shows at its own centre."""
    return await browser.evaluate(f"""(() => {{
      const e = document.querySelector({json.dumps(selector)});
      if (!e) return false;
      const r = e.getBoundingClientRect();
      if (r.width < 10 || r.height < 10) return false;
      const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      return !!top && (top === e || e.contains(top));
    }})()""")


async def open_comfy(browser: Browser, server: ComfyServer) -> None:
    await browser.goto(server.url)
    await browser.wait_for("!!(window.app && window.app.graph && window.app.canvas && window.__comfyui_dti)", 90,
                           "the ComfyUI front end with the DTI extension")
    await dismiss_dialogs(browser)  # the first-run templates browser; 1.58 ignores its close-button selector


async def load_graph(browser: Browser, workflow: dict, scale: float = 0.75, offset=(10, 10)) -> int:
    return await browser.evaluate(LOAD_GRAPH % (json.dumps(workflow), scale, offset[0], offset[1]))


FIT_VIEW = """(async () => {
  const s = window.app.extensionManager.setting;
  await s.set('Comfy.Minimap.Visible', false);
  await s.set('Comfy.Graph.CanvasInfo', false);
  window.app.extensionManager.focusMode = true;
  await new Promise(r => setTimeout(r, 300));
  const nodes = window.app.graph._nodes;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const el = window.app.canvas.canvas, margin = %s;
  const scale = Math.min((el.clientWidth - 2 * margin) / (x1 - x0), (el.clientHeight - 2 * margin) / (y1 - y0), 1.0);
  window.app.canvas.ds.scale = scale;
  window.app.canvas.ds.offset = [margin / scale - x0, margin / scale - y0];
  window.app.canvas.setDirty(true, true);
  return scale;
})()"""


async def fit_view(browser: Browser, margin: int = 16) -> float:
    """Hide menus, minimap and canvas info, and zoom so the whole graph fills the page."""
    return await browser.evaluate(FIT_VIEW % margin)
