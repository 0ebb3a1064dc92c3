"""Embedding files: the layouts the ecosystem reads, safe names, atomic writes, safe loading.

Written files use the key layout stock loaders already understand, so `embedding:name` works in
an ordinary CLIPTextEncode; everything DTI-specific lives in the safetensors metadata (never as an
extra tensor: ComfyUI falls back to a file's *first* tensor for unknown key layouts).
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import safetensors_io
from .concept import Concept, EncoderConcept
from .errors import EmbeddingFileError, SaveError
from .families import FAMILIES, describe_width, families_with_keys, tensor_key_to_encoder, width_to_encoder

log = logging.getLogger("ComfyUI-DTI")

FORMAT_NAME = "comfyui-dti"
FORMAT_VERSION = 1
EXTENSIONS = (".safetensors", ".pt", ".bin")

# File systems allow 255 bytes per file name. A stem must leave room for the extension and for
# the "_9999" that if_exists = increment may append, so every name accepted at queue time can be written.
MAX_NAME_BYTES = 255 - len(".safetensors") - len("_9999")

# What an embedding file can be. A1111 allows 75 vectors per prompt chunk and DTI trains at most 16;
# nothing that is an embedding comes near these, so a file beyond them is refused before it is read.
MAX_ROWS = 256
MAX_FILE_BYTES = 64 * 1024 * 1024


class UnknownWidthError(EmbeddingFileError):
    """A tensor whose encoder follows only from its width, and no known encoder has that width."""

    def __init__(self, path: Path, key: str, width: int, known: dict[int, str]) -> None:
        self.path, self.key, self.width, self.known = path, key, width, dict(known)
        listed = ", ".join(f"{enc} {w} wide" for w, enc in sorted(known.items()))
        super().__init__(
            f"{path}: tensor {key!r} has width {width}, which belongs to {describe_width(width)}; "
            f"the encoders here are {listed}"
        )


# Tensor keys whose encoder follows from the tensor's width (they do not name it).
WIDTH_KEYS = ("emb_params", "emp_params")  # kohya / A1111-safetensors, OneTrainer


def file_layout(encoder_keys: set[str] | frozenset[str]) -> dict[str, str]:
    """Encoder key → tensor key for a concept over these encoders, as its family's files are written.

    A stock loader looks up its own embedding key (clip_l, clip_g) and otherwise takes the first
    tensor, which is why SD1.x files carry a single tensor.
    """
    matches = families_with_keys(encoder_keys)
    if not matches:
        known = sorted({"+".join(sorted(f.encoder_keys)) for f in FAMILIES.values()})
        raise EmbeddingFileError(f"no file layout for the encoder set {sorted(encoder_keys)}; known: {', '.join(known)}")
    return matches[0].file_layout


# --------------------------------------------------------------------------------------------
# Names and paths
# --------------------------------------------------------------------------------------------

_FORBIDDEN = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


def safe_name(name: str) -> str:
    """The name as a file stem, or EmbeddingFileError saying why it cannot be one.

    Refused: empty names, "." and "..", absolute paths, path separators, characters Windows
    forbids, names starting with "." (hidden files) and names ending in "." or a space.
    """
    if not isinstance(name, str):
        raise EmbeddingFileError(f"concept name must be text, got {type(name).__name__}")
    stem = name.strip()
    for ext in EXTENSIONS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    if not stem:
        raise EmbeddingFileError("concept name is empty: give the concept a file name such as 'my_cat'")
    if stem in (".", "..") or ".." in Path(stem).parts:
        raise EmbeddingFileError(f"concept name {name!r} would leave the embeddings folder; use a plain name")
    if os.path.isabs(stem) or "/" in stem or "\\" in stem:
        raise EmbeddingFileError(
            f"concept name {name!r} contains a path; use a plain name without '/' or '\\' "
            "(files are always written to the embeddings folder)"
        )
    bad = sorted(set(_FORBIDDEN.findall(stem)))
    if bad:
        raise EmbeddingFileError(f"concept name {name!r} contains characters not allowed in file names: {bad!r}")
    if stem.startswith("."):
        raise EmbeddingFileError(f"concept name {name!r} starts with '.', which would hide the file")
    if stem.endswith((".", " ")):
        raise EmbeddingFileError(f"concept name {name!r} ends with '.' or a space")
    size = len(stem.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise EmbeddingFileError(
            f"concept name {stem[:40]!r}… is {size} bytes long (UTF-8); file systems allow 255 bytes per file name, so "
            f"names may have at most {MAX_NAME_BYTES} (room for '_9999.safetensors'): use a shorter name"
        )
    if " " in stem:
        # `embedding:` names end at the first space in ComfyUI prompts.
        raise EmbeddingFileError(
            f"concept name {name!r} contains a space; prompts could not refer to it as embedding:name. "
            "Use '_' or '-' instead"
        )
    return stem


def resolve_inside(folder: str | os.PathLike[str], relative: str) -> Path:
    """folder/relative, refusing anything that resolves outside folder (symlinks included)."""
    root = Path(folder).resolve()
    target = (root / relative).resolve()
    if os.path.commonpath([root, target]) != str(root):
        raise EmbeddingFileError(f"{relative!r} resolves outside {root}; refusing to touch it")
    return target


def save_path_for(folder: str | os.PathLike[str], name: str, on_exists: str = "increment") -> Path:
    """Where a concept called ``name`` is written; on_exists: increment | overwrite | error."""
    stem = safe_name(name)
    path = resolve_inside(folder, stem + ".safetensors")
    if not path.exists() or on_exists == "overwrite":
        return path
    if on_exists == "error":
        raise EmbeddingFileError(
            f"{path.name} already exists in {path.parent}; pick another name or set 'if exists' to overwrite/increment"
        )
    if on_exists != "increment":
        raise EmbeddingFileError(f"unknown on_exists policy {on_exists!r}: use increment, overwrite or error")
    for i in range(2, 10000):
        candidate = resolve_inside(folder, f"{stem}_{i}.safetensors")
        if not candidate.exists():
            return candidate
    raise EmbeddingFileError(f"too many versions of {stem} in {path.parent}")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.detach().to(torch.float32).contiguous().numpy().tobytes()).decode("ascii")


def _unb64(text: str, shape: tuple[int, ...]) -> torch.Tensor:
    raw = base64.b64decode(text.encode("ascii"))
    return torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(shape).clone()


def concept_metadata(concept: Concept) -> dict[str, str]:
    encoders = {}
    for key, enc in concept.encoders.items():
        encoders[key] = {
            "n_vectors": enc.n_vectors,
            "width": enc.width,
            "m_star": enc.m_star,
            "encoder_id": enc.encoder_id,
            "weights_hash": enc.weights_hash,
            "mu_b64": _b64(enc.mu) if enc.mu is not None else None,
        }
    facts = {
        "name": concept.name,
        "method": concept.method,
        "family": concept.family,
        "encoders": encoders,
        "info": concept.info,
    }
    return {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "dti": json.dumps(facts, sort_keys=True, default=str),
    }


def concept_tensors(concept: Concept) -> dict[str, torch.Tensor]:
    layout = file_layout(set(concept.encoders))
    return {layout[k]: concept.encoders[k].vectors().contiguous() for k in layout}


def check_writable(folder: str | os.PathLike[str], what: str) -> None:
    """SaveError now, instead of after the work, when ``folder`` (or the folder that would hold it) takes no new files.

    Creates nothing: a folder that does not exist yet is judged by its nearest existing parent.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        cause = errno.ENOTDIR if not existing.is_dir() else errno.EACCES
        raise safetensors_io.write_error(OSError(cause, os.strerror(cause)), existing, what, SaveError)


def save_concept(
    concept: Concept, folder: str | os.PathLike[str], name: str | None = None, on_exists: str = "increment"
) -> Path:
    """Write atomically (temp file + rename) into folder, verify by reading it back, return the path.

    A failed write raises SaveError naming the folder and the remedy; nothing at the path changes.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise safetensors_io.write_error(e, folder, f"concept {concept.name!r}", SaveError) from e
    path = save_path_for(folder, name if name is not None else concept.name, on_exists)

    def read_back(tmp: Path) -> None:
        # Through the loader itself, before the rename replaces anything.
        back = load_embedding(tmp).vectors
        if set(back) != set(concept.encoders):
            raise EmbeddingFileError(f"read-back of {path.name} gave encoders {sorted(back)}; nothing was saved")
        for enc, rows in back.items():
            if not torch.equal(rows, concept.encoders[enc].vectors()):
                raise EmbeddingFileError(f"read-back of {path.name} failed for the {enc} rows; nothing was saved")

    try:
        safetensors_io.write_atomic(concept_tensors(concept), path, concept_metadata(concept), verify=read_back)
    except OSError as e:
        raise safetensors_io.write_error(e, folder, path.name, SaveError) from e
    log.info("ComfyUI-DTI: saved %s to %s", concept.describe(), path)
    return path


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedEmbedding:
    path: Path
    layout: str  # comfyui-dti | sdxl | kohya | onetrainer | a1111 | diffusers | diffusers-sdxl-pair
    vectors: dict[str, torch.Tensor]  # encoder key → (n, d) fp32
    metadata: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] | None = None  # parsed DTI metadata for our own files

    def to_concept(self, name: str | None = None) -> Concept:
        name = name or self.path.stem
        if self.facts is None:
            encoders = {k: EncoderConcept.from_vectors(v) for k, v in self.vectors.items()}
            return Concept(name=name, encoders=encoders, method="imported", info={"layout": self.layout})
        encoders = {}
        for key, vec in self.vectors.items():
            meta = self.facts.get("encoders", {}).get(key, {})
            enc = EncoderConcept.from_vectors(vec, m_star=meta.get("m_star"), encoder_id=meta.get("encoder_id"),
                                              weights_hash=meta.get("weights_hash"))
            if meta.get("mu_b64"):
                enc.mu = _unb64(meta["mu_b64"], tuple(vec.shape))
            encoders[key] = enc
        return Concept(
            name=self.facts.get("name") or name,
            encoders=encoders,
            method=self.facts.get("method", "dti"),
            family=self.facts.get("family"),
            info=dict(self.facts.get("info") or {}),
        )


def _as_rows(t: Any, path: Path, key: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise EmbeddingFileError(f"{path}: entry {key!r} is a {type(t).__name__}, not a tensor")
    t = t.detach().to(torch.float32).cpu()
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2 or t.shape[0] == 0:
        raise EmbeddingFileError(f"{path}: tensor {key!r} has shape {tuple(t.shape)}, expected (n_vectors, width)")
    if not bool(torch.isfinite(t).all()):
        raise EmbeddingFileError(f"{path}: tensor {key!r} contains NaN or infinite values; the file is damaged — "
                                 "re-train or re-export it")
    zero = torch.nonzero(torch.linalg.vector_norm(t, dim=-1) == 0).flatten().tolist()
    if zero:
        raise EmbeddingFileError(f"{path}: tensor {key!r} has all-zero row(s) {zero[:8]}, which have no direction; "
                                 "the file is damaged or padded — re-export it without empty vectors")
    return t


def _check_header(header: safetensors_io.Header, path: Path, widths: dict[int, str]) -> None:
    """Refuse a safetensors file from its header alone: shapes an embedding cannot have, widths no encoder has."""
    if not header.tensors:
        raise EmbeddingFileError(f"{path}: the file holds no tensors; pick an embedding file")
    named = tensor_key_to_encoder()
    ours = header.metadata.get("format") == FORMAT_NAME
    for key, info in header.tensors.items():
        shape = info.shape[1:] if len(info.shape) == 3 and info.shape[0] == 1 else info.shape
        shape = (1, *shape) if len(shape) == 1 else shape
        if len(shape) != 2 or not (1 <= shape[0] <= MAX_ROWS) or shape[1] < 1:
            raise EmbeddingFileError(
                f"{path}: tensor {key!r} has shape {list(info.shape)}, expected (n_vectors, width) with n_vectors ≤ {MAX_ROWS}. "
                "This is not a textual-inversion embedding (a LoRA or model?) — move it out of the embeddings folder"
            )
        by_width = not ours and key not in named and (key in WIDTH_KEYS or len(header.tensors) == 1)
        if by_width and shape[1] not in widths:
            raise UnknownWidthError(path, key, shape[1], widths)


def _by_width(t: torch.Tensor, path: Path, key: str, widths: dict[int, str]) -> str:
    width = int(t.shape[-1])
    if width not in widths:
        raise UnknownWidthError(path, key, width, widths)
    return widths[width]


def _read_pickle(path: Path) -> Any:
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary code."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise EmbeddingFileError(
            f"{path}: refused to load — the pickle contains objects other than tensors and plain data "
            f"({str(e).splitlines()[0] if str(e) else 'unsafe global'}). Pickles can run code; convert the "
            "embedding to .safetensors with a trusted tool, or re-save it from its source"
        ) from e
    except Exception as e:
        raise EmbeddingFileError(f"{path}: not a readable embedding file ({type(e).__name__}: {e}); it is empty, truncated or "
                                 "not an embedding — re-download or re-save it") from e


def _pair_sibling(path: Path) -> Path | None:
    """learned_embeds[-steps-N].safetensors ↔ learned_embeds_2[-steps-N].safetensors."""
    name = path.name
    if name.startswith("learned_embeds_2"):
        other = path.with_name("learned_embeds" + name[len("learned_embeds_2"):])
    elif name.startswith("learned_embeds"):
        other = path.with_name("learned_embeds_2" + name[len("learned_embeds"):])
    else:
        return None
    return other if other.is_file() else None


def _classify(raw: dict[str, Any], path: Path, widths: dict[int, str]) -> tuple[str, dict[str, torch.Tensor]]:
    """Map a file's top-level entries to encoder rows; returns (layout name, vectors)."""
    if "string_to_param" in raw:  # A1111 .pt
        params = raw["string_to_param"]
        if not isinstance(params, dict) or not params:
            raise EmbeddingFileError(f"{path}: 'string_to_param' is empty or not a mapping")
        key, t = next(iter(params.items()))
        rows = _as_rows(t, path, f"string_to_param.{key}")
        return "a1111", {_by_width(rows, path, key, widths): rows}
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise EmbeddingFileError(f"{path}: no tensors found (keys: {sorted(map(str, raw))[:8]})")
    named_keys = tensor_key_to_encoder()
    named = {k: v for k, v in tensors.items() if k in named_keys}
    if named:
        out: dict[str, torch.Tensor] = {}
        for k, v in named.items():
            enc = named_keys[k]
            if enc in out:
                raise EmbeddingFileError(f"{path}: two tensors claim the {enc} encoder ({sorted(named)})")
            out[enc] = _as_rows(v, path, k)
        return ("sdxl" if set(out) == set(FAMILIES["sdxl"].encoder_keys) else "onetrainer"), out
    for k in WIDTH_KEYS:
        if k in tensors:
            rows = _as_rows(tensors[k], path, k)
            return ("kohya" if k == "emb_params" else "onetrainer"), {_by_width(rows, path, k, widths): rows}
    if len(tensors) == 1:  # diffusers / official DTI: the single key is the placeholder string
        k, v = next(iter(tensors.items()))
        rows = _as_rows(v, path, k)
        return "diffusers", {_by_width(rows, path, k, widths): rows}
    raise EmbeddingFileError(
        f"{path}: unrecognized layout with tensors {sorted(tensors)[:8]}; expected clip_l/clip_g, gemma, "
        "emb_params, string_to_param or a single placeholder key"
    )


def load_embedding(path: str | os.PathLike[str], widths: dict[int, str] | None = None) -> LoadedEmbedding:
    """Read any supported embedding file. Pickled formats go through torch.load(weights_only=True).

    ``widths`` maps a width to an encoder key for layouts that do not name their encoder (kohya,
    A1111, diffusers): pass the connected model's encoders; the default knows CLIP-L, CLIP-G, Gemma-2.
    """
    path = Path(path)
    widths = width_to_encoder() if widths is None else widths
    if not path.is_file():
        raise EmbeddingFileError(f"{path}: no such file; refresh the node (R) and pick an existing file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise EmbeddingFileError(
            f"{path}: {size / 2**20:.0f} MiB, far more than an embedding (a few KiB to 1 MiB); it is probably a LoRA or "
            "model — move it out of the embeddings folder"
        )
    suffix = path.suffix.lower()
    metadata: dict[str, str] = {}
    if suffix == ".safetensors":
        raw, metadata = safetensors_io.read(path, EmbeddingFileError, check=lambda h: _check_header(h, path, widths))
    elif suffix in (".pt", ".bin", ".ckpt", ".pth"):
        raw = _read_pickle(path)
        if not isinstance(raw, dict):
            raise EmbeddingFileError(f"{path}: expected a dict of tensors, found {type(raw).__name__}")
    else:
        raise EmbeddingFileError(f"{path}: unsupported extension {suffix!r}; use .safetensors, .pt or .bin")

    if metadata.get("format") == FORMAT_NAME:
        return _load_ours(path, raw, metadata)

    layout, vectors = _classify(raw, path, widths)
    sibling = _pair_sibling(path) if layout == "diffusers" else None
    if sibling is not None:
        other_raw = (safetensors_io.read(sibling, EmbeddingFileError, check=lambda h: _check_header(h, sibling, widths))[0]
                     if sibling.suffix == ".safetensors" else _read_pickle(sibling))
        other_layout, other_vectors = _classify(other_raw, sibling, widths)
        clash = set(vectors) & set(other_vectors)
        if clash:
            raise EmbeddingFileError(f"{path} and {sibling.name} both hold {sorted(clash)}; cannot merge the pair")
        vectors = {**vectors, **other_vectors}
        layout = "diffusers-sdxl-pair"
        log.info("ComfyUI-DTI: merged %s with %s", path.name, sibling.name)
    return LoadedEmbedding(path=path, layout=layout, vectors=vectors, metadata=metadata)


def _load_ours(path: Path, raw: dict[str, torch.Tensor], metadata: dict[str, str]) -> LoadedEmbedding:
    version = metadata.get("format_version", "?")
    if version != str(FORMAT_VERSION):
        raise EmbeddingFileError(
            f"{path}: written by format version {version!r}, this pack reads version {FORMAT_VERSION}; update ComfyUI-DTI"
        )
    try:
        facts = json.loads(metadata.get("dti", "{}"))
    except json.JSONDecodeError as e:
        raise EmbeddingFileError(f"{path}: metadata 'dti' is not valid JSON ({e})") from e
    encoders = list((facts.get("encoders") or {}).keys())
    if not encoders:
        raise EmbeddingFileError(f"{path}: metadata lists no encoders")
    layout = file_layout(set(encoders))
    vectors = {}
    for enc in encoders:
        key = layout[enc]
        if key not in raw:
            raise EmbeddingFileError(f"{path}: metadata names encoder {enc!r} but tensor {key!r} is missing")
        vectors[enc] = _as_rows(raw[key], path, key)
        m_star = facts["encoders"][enc].get("m_star")
        if m_star is not None and facts.get("method") == "dti":
            norms = torch.linalg.vector_norm(vectors[enc].double(), dim=-1)
            worst = float((norms / m_star - 1).abs().max())
            if worst > 1e-4:
                raise EmbeddingFileError(
                    f"{path}: {enc} rows should have norm m*={m_star:.6g} but deviate by {worst:.2e} (relative); "
                    "the file was modified after saving"
                )
    return LoadedEmbedding(path=path, layout=FORMAT_NAME, vectors=vectors, metadata=metadata, facts=facts)


def list_embedding_files(folders: list[str]) -> list[str]:
    """Relative paths (with subfolders, '/'-separated) of embedding files under the folders."""
    found: set[str] = set()
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root, followlinks=True):
            for f in files:
                if f.lower().endswith(EXTENSIONS) and not f.startswith(safetensors_io.TEMP_PREFIX):
                    rel = Path(dirpath, f).relative_to(root).as_posix()
                    found.add(rel)
    return sorted(found, key=str.lower)
