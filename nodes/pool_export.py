"""Nodes for running DTI Train from a pool client over ComfyUI's HTTP API (tools/dti_pool).

No stock route returns a file from the embeddings folder: `/view` serves only the output, input
and temp folders. DTI Pool Export writes the trained concept into output/dti_pool/, where `/view`
reaches it, and reports the file in the prompt's history. DTI Pool Cleanup removes the images a
client uploaded for one job (input/dti_pool/<job>/), which no stock route can delete.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import folder_paths

from ..dti import formats
from ..dti.errors import DTIError, InputError
from . import validation
from .api import io
from .types import DTIConcept

POOL_FOLDER = "dti_pool"  # the subfolder of output/ (results) and input/ (staged images) the pool client uses


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def staged_folder(relative: str) -> Path:
    """input/dti_pool/<job>, refusing anything else (the node deletes what this returns)."""
    root = Path(folder_paths.get_input_directory()) / POOL_FOLDER
    rel = relative.strip().replace("\\", "/")
    prefix = POOL_FOLDER + "/"
    if not rel.startswith(prefix) or rel == prefix:
        raise InputError(f"staged folder {relative!r} must be a job folder under input/{POOL_FOLDER}/ (e.g. {POOL_FOLDER}/my-job)")
    return formats.resolve_inside(root, rel[len(prefix):])


class DTIPoolExport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DTIPoolExport",
            display_name="DTI Pool Export",
            category="DTI/pool",
            description=(
                "Writes a concept into output/dti_pool/ so that a client of ComfyUI's HTTP API can download it with "
                "/view; the file name, folder and sha256 are listed in the prompt's history."
            ),
            is_output_node=True,
            inputs=[
                DTIConcept.Input("concept", tooltip="The concept to export (DTI Train's concept output)."),
                io.String.Input("name", default="my_concept",
                                tooltip="File name in output/dti_pool/ (without .safetensors); an existing file is replaced."),
            ],
            outputs=[],
        )

    @classmethod
    def validate_inputs(cls, name=None) -> bool | str:
        return validation.check(cls, {}, *([lambda: validation.name_problem(name)] if name is not None else []))

    @classmethod
    def execute(cls, concept, name) -> io.NodeOutput:
        folder = Path(folder_paths.get_output_directory()) / POOL_FOLDER
        path = formats.save_concept(concept, folder, name, "overwrite")
        entry = {"filename": path.name, "subfolder": POOL_FOLDER, "type": "output", "sha256": _sha256(path),
                 "bytes": path.stat().st_size}
        return io.NodeOutput(ui={"dti_pool": [entry], "text": [f"exported {POOL_FOLDER}/{path.name} ({entry['sha256'][:12]})"]})


class DTIPoolCleanup(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DTIPoolCleanup",
            display_name="DTI Pool Cleanup",
            category="DTI/pool",
            description="Deletes the images a pool client uploaded for one job (a folder under input/dti_pool/).",
            is_output_node=True,
            inputs=[
                io.String.Input("folder", default=f"{POOL_FOLDER}/my-job",
                                tooltip=f"The job's staging folder, relative to input/ (must be under {POOL_FOLDER}/)."),
            ],
            outputs=[],
        )

    @classmethod
    def fingerprint_inputs(cls, folder=None) -> float:
        return float("nan")  # never cached: the folder may have been uploaded again since the last cleanup

    @classmethod
    def validate_inputs(cls, folder=None) -> bool | str:
        if folder is not None:
            try:
                staged_folder(folder)
            except DTIError as e:
                return str(e)
        return True

    @classmethod
    def execute(cls, folder) -> io.NodeOutput:
        target = staged_folder(folder)
        existed = target.is_dir()
        if existed:
            shutil.rmtree(target)
        return io.NodeOutput(ui={"dti_pool_removed": [{"folder": folder, "existed": existed}]})


POOL_NODES = [DTIPoolExport, DTIPoolCleanup]
