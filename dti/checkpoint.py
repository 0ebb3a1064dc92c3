"""Training checkpoints as safetensors: nested state (optimizer state_dicts included) without pickle.

Tensors go into the file under generated keys; the structure around them (dicts, lists, numbers,
strings) goes into the metadata as JSON with {"__tensor__": key} placeholders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from . import safetensors_io
from .errors import CheckpointError

CHECKPOINT_FORMAT = "comfyui-dti-checkpoint"


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if any(not isinstance(k, (str, int)) for k in obj):
            raise CheckpointError(f"checkpoint dict keys must be str or int, got {[type(k).__name__ for k in obj]}")
        # int keys (optimizer state is keyed by parameter index) survive JSON as tagged strings
        return {"__dict__": [[k, flatten(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten(v, tensors, prefix) for v in obj], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} in a checkpoint")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"checkpoint refers to tensor {key!r}, which the file lacks")
            return tensors[key]
        if "__dict__" in obj:
            return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
        raise CheckpointError(f"malformed checkpoint structure: {sorted(obj)[:5]}")
    return obj


# A checkpoint holds a few (≤ 16, width) tensors per encoder plus optimizer state: far below this.
MAX_CHECKPOINT_BYTES = 256 * 1024 * 1024


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write atomically; a failed write raises CheckpointError naming the folder and the remedy."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)
    metadata = {"format": CHECKPOINT_FORMAT, "state": json.dumps(skeleton)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return safetensors_io.write_atomic(tensors, path, metadata)
    except OSError as e:
        raise safetensors_io.write_error(e, path.parent, f"checkpoint {path.name}", CheckpointError) from e


def _check_header(header: safetensors_io.Header, path: Path) -> None:
    """A DTI checkpoint by its metadata, of a plausible size, before any tensor is read."""
    if header.metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a DTI training checkpoint (format {header.metadata.get('format')!r}); "
            "resume takes the files DTI Train writes every N steps"
        )
    total = sum(t.nbytes for t in header.tensors.values())
    if total > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path}: holds {total / 2**20:.0f} MiB of tensors, far more than a DTI checkpoint; pick another file")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    tensors, metadata = safetensors_io.read(path, CheckpointError, check=lambda h: _check_header(h, path))
    try:
        skeleton = json.loads(metadata["state"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: its training state is missing or not valid JSON; the file is damaged — pick another") from e
    return unflatten(skeleton, tensors)
