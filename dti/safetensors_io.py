"""The one safetensors reader and atomic writer behind concept files and training checkpoints."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import safetensors
import safetensors.torch
import torch

# Temporary files start with this, so that folder listings skip them while they exist.
TEMP_PREFIX = ".dti-"


def read(path: Path, error: type[Exception]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; ``error`` (naming the file) if it is unreadable."""
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise error(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    return tensors, metadata


def write_atomic(
    tensors: dict[str, torch.Tensor],
    path: Path,
    metadata: dict[str, str],
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Write to a temporary file beside ``path``, run ``verify`` on it, then rename it into place.

    Nothing at ``path`` changes unless the whole file was written (and verified); the temporary
    file never outlives the call.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=path.suffix, dir=str(path.parent))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
