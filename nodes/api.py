"""The ComfyUI node API the pack is written against, pinned in one place.

``comfy_api.latest`` moves with every ComfyUI release; ``comfy_api.v0_0_2`` is the versioned
module ComfyUI keeps for packs that want a stable surface (in v0.3.64 it still re-exports the
same classes, so nothing differs today — the pin matters on the releases after it).
"""

from comfy_api.v0_0_2 import ComfyExtension, io, ui

__all__ = ["ComfyExtension", "io", "ui"]
