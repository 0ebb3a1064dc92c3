"""The manifest: subjects × methods, each with its images and DTI Train settings, expanded into jobs.

TOML (stdlib tomllib) or JSON:

    graph = "api/dti_train_api.json"      # optional; relative to the manifest, else the pack's workflows/
    [defaults]                            # any setting, for every subject
    methods = ["dti", "ti"]
    steps = 400
    [[subjects]]
    name = "teapot"
    images = "photos/teapot"              # a folder, or a list of files (relative to the manifest)
    initializer = "teapot"
    captions = ["a photo of {} on a table"]   # optional: one per image, or one for all
    steps = 300                           # overrides the default

A job's entry hash covers its subject name, method, settings, the graph and every image's bytes, so
an edited entry or a changed photo is a new job and an unchanged one is recognised on re-run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # what ComfyUI's LoadImageSetFromFolderNode reads
SUBJECT_KEYS = ("name", "images", "methods")  # everything else in a subject (or the defaults) is a graph setting
TOP_KEYS = ("graph", "defaults", "subjects")
DEFAULT_METHODS = ("dti",)
DEFAULT_GRAPH = "api/dti_train_api.json"
PACK_WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ManifestError(ValueError):
    """The manifest cannot be turned into jobs; the message names the subject and key at fault."""


@dataclass(frozen=True)
class Job:
    subject: str
    method: str
    settings: dict[str, Any]  # input name → value, routed to the graph's nodes by graph.py
    images: tuple[Path, ...]
    image_hashes: tuple[str, ...]
    graph_path: Path
    entry_hash: str = ""

    @property
    def name(self) -> str:
        """Unique per entry: two manifests (or two edits) never write the same file."""
        return f"{self.subject}-{self.method}-{self.entry_hash[:8]}"


@dataclass
class Manifest:
    path: Path
    graph_path: Path
    jobs: list[Job] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_document(path: Path) -> dict[str, Any]:
    """A TOML or JSON manifest as a dict (by extension; .toml needs Python 3.11's tomllib)."""
    text = path.read_bytes()
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}: not valid JSON ({e})") from e
    try:
        import tomllib
    except ImportError as e:  # Python 3.10
        raise ManifestError(f"{path}: reading TOML needs Python 3.11 or newer (tomllib); write the manifest as JSON instead") from e
    try:
        return tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid TOML ({e})") from e


def resolve_graph(value: str | None, base: Path) -> Path:
    """The API graph: relative to the manifest's folder, else to the pack's workflows/ folder."""
    rel = Path(value or DEFAULT_GRAPH)
    for candidate in ((rel,) if rel.is_absolute() else (base / rel, PACK_WORKFLOWS / rel)):
        if candidate.is_file():
            return candidate.resolve()
    raise ManifestError(f"graph {str(rel)!r} not found next to the manifest ({base}) or in {PACK_WORKFLOWS}")


def _images(subject: str, value: Any, base: Path) -> list[Path]:
    if isinstance(value, str):
        folder = (base / value).resolve()
        if not folder.is_dir():
            raise ManifestError(f"subject {subject!r}: images folder {value!r} not found (looked in {folder})")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ManifestError(f"subject {subject!r}: no {'/'.join(IMAGE_EXTENSIONS)} files in {folder}")
        return files
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        files = [(base / v).resolve() for v in value]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ManifestError(f"subject {subject!r}: image file(s) not found: {', '.join(missing)}")
        odd = [f.name for f in files if f.suffix.lower() not in IMAGE_EXTENSIONS]
        if odd:
            raise ManifestError(f"subject {subject!r}: {', '.join(odd)} not one of {', '.join(IMAGE_EXTENSIONS)}")
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise ManifestError(f"subject {subject!r}: two images share a file name; they are uploaded into one folder")
        return files
    raise ManifestError(f"subject {subject!r}: 'images' must be a folder or a non-empty list of files, got {value!r}")


def _methods(subject: str, value: Any) -> list[str]:
    methods = [value] if isinstance(value, str) else value
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) and _NAME.match(m) for m in methods):
        raise ManifestError(f"subject {subject!r}: 'methods' must be a non-empty list of method names, got {value!r}")
    if len(set(methods)) != len(methods):
        raise ManifestError(f"subject {subject!r}: 'methods' lists a method twice: {methods}")
    return methods


def _settings(subject: str, merged: dict[str, Any]) -> dict[str, Any]:
    settings = {k: v for k, v in merged.items() if k not in SUBJECT_KEYS}
    if "captions" in settings and isinstance(settings["captions"], list):
        settings["captions"] = "\n".join(str(c) for c in settings["captions"])
    if not str(settings.get("initializer", "")).strip():
        raise ManifestError(f"subject {subject!r}: no 'initializer' (a word close to the concept, e.g. 'dog'); "
                            "set it on the subject or in [defaults]")
    for key, value in settings.items():
        if isinstance(value, (dict, list)):
            raise ManifestError(f"subject {subject!r}: setting {key!r} must be a single value, got {value!r}")
    return settings


def entry_hash(subject: str, method: str, settings: dict[str, Any], image_hashes: list[str], graph_hash: str) -> str:
    payload = {"subject": subject, "method": method, "settings": settings, "images": image_hashes, "graph": graph_hash}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def load_manifest(path: str | Path, graph_override: str | Path | None = None) -> Manifest:
    """Parse and expand a manifest into jobs (one per subject × method); nothing is contacted."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ManifestError(f"manifest {path} not found")
    doc = read_document(path)
    base = path.parent
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise ManifestError(f"{path.name}: unknown top-level key(s) {unknown}; use {list(TOP_KEYS)} "
                            "(subject settings go in [defaults] or [[subjects]])")
    defaults = doc.get("defaults", {})
    subjects = doc.get("subjects")
    if not isinstance(defaults, dict):
        raise ManifestError(f"{path.name}: [defaults] must be a table, got {defaults!r}")
    if not isinstance(subjects, list) or not subjects or not all(isinstance(s, dict) for s in subjects):
        raise ManifestError(f"{path.name}: no subjects; add [[subjects]] tables with name, images and initializer")
    if "name" in defaults or "images" in defaults:
        raise ManifestError(f"{path.name}: 'name' and 'images' belong to each subject, not to [defaults]")
    graph_path = resolve_graph(str(graph_override) if graph_override else doc.get("graph"), base)
    graph_hash = sha256_file(graph_path)
    manifest = Manifest(path=path, graph_path=graph_path)
    seen: set[str] = set()
    hashes: dict[Path, str] = {}
    for index, raw in enumerate(subjects):
        subject = raw.get("name")
        if not isinstance(subject, str) or not _NAME.match(subject):
            raise ManifestError(f"subjects[{index}]: 'name' must be letters, digits, '_', '-' or '.' (got {subject!r})")
        if subject in seen:
            raise ManifestError(f"subject {subject!r} appears twice; subject names must be unique")
        seen.add(subject)
        if "images" not in raw:
            raise ManifestError(f"subject {subject!r}: no 'images' (a folder or a list of files)")
        merged = {**defaults, **raw}
        images = _images(subject, raw["images"], base)
        image_hashes = [hashes.setdefault(p, sha256_file(p)) for p in images]
        methods = _methods(subject, merged.get("methods", list(DEFAULT_METHODS)))
        settings = _settings(subject, merged)
        if "method" in settings:
            raise ManifestError(f"subject {subject!r}: use 'methods = [...]' (a list), not 'method'")
        for method in methods:
            job_settings = {**settings, "method": method}
            manifest.jobs.append(Job(subject=subject, method=method, settings=job_settings, images=tuple(images),
                                     image_hashes=tuple(image_hashes), graph_path=graph_path,
                                     entry_hash=entry_hash(subject, method, job_settings, image_hashes, graph_hash)))
    return manifest
