"""Progress in ComfyUI's UI: the progress bar with a preview image, the pack's web messages, interrupts."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import comfy.model_management
import comfy.utils
import torch


def check_interrupted() -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()


class Progress:
    """ComfyUI progress bar plus a live-chart message for the pack's web extension."""

    def __init__(self, total: int, node_id: str | None, preview_every_s: float = 1.0) -> None:
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.total = total
        self.node_id = node_id
        self.preview_every_s = preview_every_s
        self._last_preview = 0.0

    def update(self, step: int, preview_factory=None, data: dict[str, Any] | None = None, force_preview: bool = False) -> None:
        """Move the bar; the preview image is redrawn at most every ``preview_every_s`` unless forced
        (a new sample frame) or at the last step."""
        preview = None
        now = time.monotonic()
        due = force_preview or now - self._last_preview >= self.preview_every_s or step >= self.total
        if preview_factory is not None and due:
            self._last_preview = now
            preview = ("JPEG", preview_factory(), 1024)
        self.bar.update_absolute(step, self.total, preview)
        if data is not None:
            send_to_web("dti.train.progress", {"node": self.node_id, "step": step, "total": self.total, **data})


    def send_frame(self, step: int, image: torch.Tensor, max_side: int = 512) -> None:
        """A sample frame for the web panel (drawn beside the live chart), as a JPEG data URL."""
        from .plots import tensor_to_pil

        picture = tensor_to_pil(image)
        picture.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=90)
        url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        send_to_web("dti.train.preview", {"node": self.node_id, "step": step, "total": self.total, "image": url})


def send_to_web(event: str, data: dict[str, Any]) -> None:
    """A message for the front end, when a server is running (not in library use or tests)."""
    try:
        import server

        instance = getattr(server.PromptServer, "instance", None)
    except ImportError:
        instance = None
    if instance is not None and getattr(instance, "client_id", None) is not None:
        instance.send_sync(event, data, instance.client_id)
