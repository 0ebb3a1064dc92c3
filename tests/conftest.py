"""Shared pytest setup: a one-thread torch (small ops lose to thread hand-offs), the slow marker, and the
fixtures of every tier that runs inside a real ComfyUI (integration, reliability) with tiny random-weight models.

ComfyUI is found through COMFYUI_PATH, an enclosing custom_nodes/ folder, or ~/comfy/ComfyUI;
without one every test that needs it skips with the same reason. ComfyUI's built-in nodes are
initialised once per run and the pack is loaded through ComfyUI's own custom-node loader. The
fixtures live here, not in one tier's conftest, so that every tier shares one instance of each.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
import tiny_comfy  # noqa: E402
from comfy_harness import register_test_nodes, tiny_objects  # noqa: E402

COMFY_ROOT = tiny_comfy.find_comfyui()
SKIP_REASON = tiny_comfy.SKIP_REASON


def _import_or_skip():
    if COMFY_ROOT is None:
        pytest.skip(SKIP_REASON)
    try:
        tiny_comfy.import_comfy(COMFY_ROOT)
        import comfy.sd  # noqa: F401
    except ImportError as e:
        pytest.skip(f"ComfyUI at {COMFY_ROOT} does not import in this Python ({e}); run the suite with its venv")


@pytest.fixture(scope="session")
def comfy_dirs(tmp_path_factory):
    _import_or_skip()
    import folder_paths

    base = tmp_path_factory.mktemp("comfy")
    dirs = {name: base / name for name in ("embeddings", "output", "temp", "input")}
    for d in dirs.values():
        d.mkdir()
    folder_paths.add_model_folder_path("embeddings", str(dirs["embeddings"]), is_default=True)
    folder_paths.set_output_directory(str(dirs["output"]))
    folder_paths.set_temp_directory(str(dirs["temp"]))
    folder_paths.set_input_directory(str(dirs["input"]))
    return dirs


@pytest.fixture(scope="session")
def pack(comfy_dirs):
    """The pack module as ComfyUI's loader imported it (its submodules share that name)."""
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    ok = asyncio.run(nodes.load_custom_node(str(tiny_comfy.PACK_ROOT)))
    assert ok, "ComfyUI's custom-node loader failed to import the pack (see the log above)"
    module = sys.modules[str(tiny_comfy.PACK_ROOT).replace(".", "_x_")]
    register_test_nodes()
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def embeddings(comfy_dirs):
    """A clean embeddings folder per test."""
    folder = comfy_dirs["embeddings"]
    for f in folder.rglob("*"):
        if f.is_file():
            f.unlink()
    return folder


@pytest.fixture(scope="session")
def sdxl(comfy_dirs):
    """(MODEL, CLIP, VAE) of a tiny SDXL, built under inference mode as loader nodes do."""
    return tiny_objects("sdxl")


@pytest.fixture(scope="session")
def sd1(comfy_dirs):
    return tiny_objects("sd1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: benchmarks-like checks that take seconds; deselect with -m 'not slow'")
