"""Real ComfyUI server processes for the pool tests: each in its own base directory (input, output,
temp, models/embeddings), with the pack and the test-only tiny-model nodes in custom_nodes."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from browser import ComfyServer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class PoolServer(ComfyServer):
    """A ComfyServer that can be killed (SIGKILL, as a crash) and restarted on the same folders."""

    def start(self, timeout: float = 120) -> PoolServer:
        # One torch thread per server: the pool tests run two servers on two cores.
        old = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            super().start(timeout)
        finally:
            if old is None:
                del os.environ["OMP_NUM_THREADS"]
            else:
                os.environ["OMP_NUM_THREADS"] = old
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def shutdown(self) -> None:
        """Stop the process, keep the folders (stop() would delete them)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)

    def files(self, folder: str) -> list[Path]:
        root = self.base / folder
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def png(path: Path, seed: int, size: int = 64) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    low = rng.random((size // 16, size // 16, 3))
    Image.fromarray((np.kron(low, np.ones((16, 16, 1))) * 255).astype("uint8")).save(path)


def make_workspace(root: Path, subjects: dict[str, str], methods: list[str], steps: int, extra: str = "") -> Path:
    """Images, a graph with the tiny loader in place of CheckpointLoaderSimple, and a manifest."""
    graph = json.loads((REPO / "workflows" / "api" / "dti_train_api.json").read_text())
    loader = next(k for k, n in graph.items() if n["class_type"] == "CheckpointLoaderSimple")
    graph[loader] = {"class_type": "DTITestTinyCheckpoint", "inputs": {"ckpt_name": "tiny", "family": "sd1"}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "tiny_graph.json").write_text(json.dumps(graph))
    lines = ['graph = "tiny_graph.json"', "[defaults]", f"methods = {json.dumps(methods)}", f"steps = {steps}",
             "resolution = 64", "batch_size = 2", extra]
    for i, (name, init) in enumerate(subjects.items()):
        folder = root / name
        folder.mkdir(exist_ok=True)
        for k in range(2):
            png(folder / f"{k}.png", seed=10 * i + k)
        lines += ["[[subjects]]", f'name = "{name}"', f'images = "{name}"', f'initializer = "{init}"']
    (root / "manifest.toml").write_text("\n".join(lines) + "\n")
    return root / "manifest.toml"
