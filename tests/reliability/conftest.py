"""Reliability tier: bad inputs and faults through ComfyUI's real prompt validation and executor.

The ComfyUI fixtures (comfy_dirs, pack, sdxl, embeddings) come from tests/conftest.py. Here: a
clean output folder, what every case checks on disk, and a test-only node for broken image batches.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file (hidden temporary files included) under the folders → a hash of its bytes."""
    out = {}
    for folder in folders:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture
def output(comfy_dirs):
    """A clean output folder per test (checkpoints, unsaved concepts)."""
    folder = comfy_dirs["output"]
    for f in sorted(folder.rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    return folder


@pytest.fixture
def disk(embeddings, output):
    """Snapshot of the embeddings and output folders; ``disk.changes()`` lists what differs since."""

    class Disk:
        def __init__(self):
            self.reset()

        def reset(self) -> None:
            """Take the 'before' snapshot now (after a case has set up its files)."""
            self.before = snapshot(embeddings, output)

        def changes(self) -> dict[str, list[str]]:
            after = snapshot(embeddings, output)
            return {
                "added": sorted(set(after) - set(self.before)),
                "removed": sorted(set(self.before) - set(after)),
                "changed": sorted(k for k in after if k in self.before and after[k] != self.before[k]),
            }

        def unchanged(self) -> bool:
            return self.changes() == {"added": [], "removed": [], "changed": []}

    return Disk()


@pytest.fixture(scope="session")
def bad_images_node(pack):
    """DTITestBadImages: image batches no loader should produce (NaN, inf, empty, mixed sizes)."""
    import tiny_comfy

    import nodes

    class DTITestBadImages:
        @classmethod
        def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's V1 API names)
            return {"required": {"kind": (["nan", "inf", "empty", "mixed"],)}}

        RETURN_TYPES = ("IMAGE",)
        OUTPUT_IS_LIST = (True,)
        FUNCTION = "make"
        CATEGORY = "testing"

        def make(self, kind):
            images = tiny_comfy.random_images(2, 64)
            if kind == "nan":
                images[1, 5, 5, 0] = float("nan")
            elif kind == "inf":
                images[0, 0, 0, 2] = float("inf")
            elif kind == "empty":
                return ([images[:0]],)
            elif kind == "mixed":
                return ([images, tiny_comfy.random_images(1, 80)],)
            return ([images],)

    nodes.NODE_CLASS_MAPPINGS["DTITestBadImages"] = DTITestBadImages
    return "DTITestBadImages"


@pytest.fixture(autouse=True)
def _no_interrupt_left():
    """An interrupt case must not leak its flag into the next case."""
    yield
    try:
        import comfy.model_management
    except ImportError:  # no ComfyUI here: the case skipped
        return
    comfy.model_management.interrupt_current_processing(False)
