"""Real ComfyUI server processes for the pool tests: each in its own base directory (input, output,
temp, models/embeddings), with the pack and the test-only tiny-model nodes in custom_nodes."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from browser import ComfyServer  # noqa: E402


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
