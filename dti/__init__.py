"""Host-free core of ComfyUI-DTI: sphere math, the optimizer, norm statistics, concepts, files, the trainer.

Nothing in this package imports ComfyUI; `nodes/` adapts ComfyUI's objects to it.
"""

__all__ = ["checkpoint", "concept", "diagnostics", "formats", "magnitude", "optim", "sphere", "trainer"]
