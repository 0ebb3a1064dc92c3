"""ComfyUI-DTI: Directional Textual Inversion nodes for ComfyUI.

ComfyUI imports this file; the nodes register through `comfy_entrypoint` (V3 API). Without a
ComfyUI host (tests of the core, command-line use) the import succeeds and registers nothing.
"""

WEB_DIRECTORY = "./web"

try:
    import comfy.utils  # noqa: F401  (probe: are we running inside ComfyUI?)
except ImportError:
    pass
else:
    from .nodes import comfy_entrypoint  # noqa: F401

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
