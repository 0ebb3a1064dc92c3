"""Where the pack reads and writes: ComfyUI's embeddings folders and its output folder."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..dti import formats


def embeddings_folder() -> Path:
    """Where concepts are written: the first (default) embeddings folder."""
    return Path(folder_paths.get_folder_paths("embeddings")[0])


def checkpoints_folder() -> Path:
    return Path(folder_paths.get_output_directory()) / "dti_checkpoints"


def unsaved_folder() -> Path:
    """Where trained vectors go when the embeddings folder refuses them (so a failed save loses nothing)."""
    return Path(folder_paths.get_output_directory()) / "dti_unsaved"


def checkpoint_choices() -> list[str]:
    """Resumable checkpoints under the checkpoints folder, relative paths."""
    root = checkpoints_folder()
    files = formats.list_embedding_files([str(root)]) if root.is_dir() else []
    return [f for f in files if f.endswith(".safetensors")]


def embedding_choices() -> list[str]:
    return formats.list_embedding_files(folder_paths.get_folder_paths("embeddings"))


def resolve_embedding(relative: str) -> Path:
    """The file for a choice, searched in every embeddings folder, never outside them."""
    for folder in folder_paths.get_folder_paths("embeddings"):
        try:
            path = formats.resolve_inside(folder, relative)
        except formats.EmbeddingFileError:
            continue
        if path.is_file():
            return path
    raise formats.EmbeddingFileError(
        f"embedding {relative!r} was not found in the embeddings folder(s) {folder_paths.get_folder_paths('embeddings')}; "
        "refresh the node (R) after adding files"
    )


def file_fingerprint(relative: str | None) -> str:
    """What makes a node that reads an embedding file re-run: the file's identity and mtime."""
    try:
        st = resolve_embedding(relative).stat()
        return f"{relative}:{st.st_mtime_ns}:{st.st_size}"
    except (formats.EmbeddingFileError, OSError, TypeError):
        return f"{relative}:missing"


def placeholder_name(relative: str) -> str:
    """The name prompts use for a file: its path without extension, as in stock `embedding:name`."""
    stem = relative
    for ext in formats.EXTENSIONS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    return stem.replace(os.sep, "/")
