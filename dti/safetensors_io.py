"""The one safetensors reader and atomic writer behind concept files and training checkpoints.

Reading checks the header first (its length, every tensor's dtype, shape and byte range, and the
caller's own rules on keys and shapes) and only then reads tensors, so a file that lies about its
size or holds something else (a LoRA, a checkpoint) is refused before any of its data is loaded.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch

# Temporary files start with this, so that folder listings skip them while they exist.
TEMP_PREFIX = ".dti-"

# A header is JSON describing the tensors plus string metadata; ours are a few hundred KiB at most
# (a base64 prior mean of 16 × 2304 floats). Anything far larger is not an embedding or checkpoint.
MAX_HEADER_BYTES = 16 * 1024 * 1024

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return DTYPE_BYTES[self.dtype] * math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def os_error_remedy(e: OSError) -> str:
    """What to do about a failed write, by its cause."""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the folder writable (or point ComfyUI's folder at a writable one in extra_model_paths.yaml)"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space on that drive"
    if e.errno == errno.ENAMETOOLONG:
        return "use a shorter name"
    return "check the folder and the drive"


def write_error(e: OSError, folder: Path, what: str, error: type[Exception]) -> Exception:
    """The pack's error for a failed write: the folder, the cause and the remedy."""
    reason = e.strerror or type(e).__name__
    return error(f"could not write {what} to {folder}: {reason} (errno {e.errno}); {os_error_remedy(e)}")


def read_header(path: Path, error: type[Exception]) -> Header:
    """The header of a safetensors file, checked against the file's real size; reads no tensor data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise error(f"{path}: not a readable safetensors file: {size} bytes, too short (truncated or empty); "
                            "re-download or re-save it")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise error(f"{path}: not a readable safetensors file: its header claims {n} bytes but the file has {size} "
                            "(truncated or another format) — re-download or re-save it")
            raw = json.loads(f.read(n).decode("utf-8"))
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e}); check that the file exists and is readable") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not a readable safetensors file: the header is not valid JSON ({e}); "
                    "the file is corrupt — re-download or re-save it") from e
    if not isinstance(raw, dict):
        raise error(f"{path}: the header is not a JSON object; the file is corrupt — re-download or re-save it")
    metadata = raw.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    tensors = {}
    for key, entry in raw.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (TypeError, KeyError, ValueError) as e:
            raise error(f"{path}: malformed header entry for tensor {key!r}; the file is corrupt") from e
        if dtype not in DTYPE_BYTES:
            raise error(f"{path}: tensor {key!r} has dtype {dtype!r}; embeddings hold float tensors (F32, F16, BF16)")
        info = TensorInfo(dtype, shape)
        if any(d < 0 for d in shape) or not (0 <= start <= end <= data_size) or end - start != info.nbytes:
            raise error(f"{path}: tensor {key!r} claims shape {list(shape)} ({dtype}) at bytes {start}–{end}, but the file "
                        f"holds {data_size} data bytes; the file is truncated or corrupt — re-download or re-save it")
        tensors[key] = info
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise error(f"{path}: the header's metadata is not a text mapping; the file is corrupt")
    return Header(tensors, dict(metadata))


def read(
    path: Path, error: type[Exception], check: Callable[[Header], None] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; ``check`` sees the header before any tensor is read.

    Every problem raises ``error`` with a message naming the file.
    """
    header = read_header(path, error)
    if check is not None:
        check(header)
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise error(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); re-download or re-save it") from e
    return tensors, header.metadata


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask is process-wide)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(
    tensors: dict[str, torch.Tensor],
    path: Path,
    metadata: dict[str, str],
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Write to a temporary file beside ``path``, run ``verify`` on it, then rename it into place.

    Nothing at ``path`` changes unless the whole file was written (and verified); the temporary
    file never outlives the call. The file gets the mode an ordinary new file gets in that folder
    (0666 less the umask), not the temporary file's 0600. OSError propagates for the caller to explain.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=path.suffix, dir=str(path.parent))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)
        if verify is not None:
            verify(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
