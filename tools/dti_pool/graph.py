"""Turn a job into an API-format prompt: the shipped graph, its placeholders filled, each manifest
setting routed to the node of the graph that has an input of that name (read from /object_info).

Routing by name keeps the manifest independent of how DTI Train's inputs are split between nodes:
a setting lands on whichever node declares it today. Unknown, ambiguous or out-of-range settings are
refused before anything is submitted.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .manifest import Job

JOB_NAME = "{{job_name}}"  # replaced by the job's unique name (the concept's file name)
IMAGE_FOLDER = "{{image_folder}}"  # replaced by the staged images' folder, relative to input/
STAGING_ROOT = "dti_pool"  # input/dti_pool/<job>/ on the server; the pack's DTI Pool Cleanup removes it
TRAIN_CLASS = "DTITrainConcept"
EXPORT_CLASS = "DTIPoolExport"
CLEANUP_CLASS = "DTIPoolCleanup"


class GraphError(ValueError):
    """The graph or a setting does not fit the server's nodes; nothing was submitted."""


@dataclass(frozen=True)
class InputSpec:
    node_id: str
    class_type: str
    name: str
    kind: str  # INT, FLOAT, BOOLEAN, STRING, COMBO, or a socket type (MODEL, IMAGE, …)
    options: dict[str, Any]
    choices: tuple[Any, ...] | None = None


def load_graph(path: Path) -> dict[str, Any]:
    try:
        graph = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GraphError(f"cannot read the API graph {path}: {e}") from e
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        raise GraphError(f"{path} is not an API-format graph (node id → {{class_type, inputs}}); export it with "
                         "ComfyUI's 'Export (API)'")
    classes = [n["class_type"] for n in graph.values()]
    for needed in (TRAIN_CLASS, EXPORT_CLASS):
        if classes.count(needed) != 1:
            raise GraphError(f"{path} must contain exactly one {needed} node (found {classes.count(needed)})")
    text = json.dumps(graph)
    for placeholder in (JOB_NAME, IMAGE_FOLDER):
        if placeholder not in text:
            raise GraphError(f"{path} has no {placeholder!r} placeholder; the pool client fills it per job")
    return graph


def node_of(graph: dict[str, Any], class_type: str) -> str:
    return next(nid for nid, n in graph.items() if n["class_type"] == class_type)


def _spec(node_id: str, class_type: str, name: str, raw: Any) -> InputSpec:
    kind, options = (raw[0], raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {}) if isinstance(raw, list) else (raw, {})
    if isinstance(kind, list):  # V1 combo: the list of choices in place of the type
        return InputSpec(node_id, class_type, name, "COMBO", options, tuple(kind))
    if kind == "COMBO":
        return InputSpec(node_id, class_type, name, "COMBO", options, tuple(options.get("options", ())))
    return InputSpec(node_id, class_type, name, str(kind), options)


def graph_inputs(graph: dict[str, Any], object_info: dict[str, Any]) -> dict[str, list[InputSpec]]:
    """Every input of every node in the graph, by input name, as the server declares them."""
    missing = sorted({n["class_type"] for n in graph.values()} - set(object_info))
    if missing:
        raise GraphError(f"the server has no node(s) {missing}: install ComfyUI-DTI (with DTI Pool Export) there, "
                         "or pick a graph whose loader that server has")
    found: dict[str, list[InputSpec]] = {}
    for node_id, node in graph.items():
        declared = object_info[node["class_type"]].get("input", {})
        for section in ("required", "optional"):
            for name, raw in (declared.get(section) or {}).items():
                found.setdefault(name, []).append(_spec(node_id, node["class_type"], name, raw))
    return found


def _settable(graph: dict[str, Any], spec: InputSpec) -> bool:
    """A widget the manifest may set: not a socket wired to another node, not a placeholder."""
    value = graph[spec.node_id]["inputs"].get(spec.name)
    if isinstance(value, list):
        return False
    if value in (JOB_NAME, IMAGE_FOLDER):
        return False
    return spec.kind in ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")


def check_value(spec: InputSpec, value: Any) -> str | None:
    """Why the value does not fit the input, or None; the server would refuse it later anyway."""
    where = f"{spec.class_type}.{spec.name}"
    if spec.kind == "COMBO":
        if spec.choices and value not in spec.choices:
            shown = ", ".join(repr(c) for c in spec.choices[:20]) + (" …" if len(spec.choices) > 20 else "")
            return f"{where} = {value!r} is not one of {shown}"
        return None
    if spec.kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{where} must be true or false, got {value!r}"
    if spec.kind == "STRING":
        return None if isinstance(value, str) else f"{where} must be text, got {value!r}"
    if spec.kind == "INT" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{where} must be a whole number, got {value!r}"
    if spec.kind == "FLOAT" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"{where} must be a number, got {value!r}"
    lo, hi = spec.options.get("min"), spec.options.get("max")
    if lo is not None and value < lo or hi is not None and value > hi:
        return f"{where} = {value!r} is outside [{lo}, {hi}]"
    return None


def route_settings(graph: dict[str, Any], object_info: dict[str, Any], settings: dict[str, Any]) -> dict[str, InputSpec]:
    """setting name → the input it sets; GraphError naming every refused setting and the valid names.

    A setting may be written `Class.input` to pick one node when several nodes share an input name.
    """
    inputs = graph_inputs(graph, object_info)
    valid = sorted({name for name, specs in inputs.items() if any(_settable(graph, s) for s in specs)})
    routed: dict[str, InputSpec] = {}
    problems = []
    for key, value in settings.items():
        cls, _, name = key.rpartition(".")
        specs = [s for s in inputs.get(name, []) if _settable(graph, s) and (not cls or s.class_type == cls)]
        if not specs:
            wired = [s for s in inputs.get(name, []) if not _settable(graph, s)]
            if wired:
                problems.append(f"{key!r} is a connection or filled in by the pool client, not a setting")
            else:
                problems.append(f"unknown setting {key!r}")
            continue
        if len(specs) > 1:
            problems.append(f"{key!r} is an input of several nodes ({', '.join(s.class_type for s in specs)}); "
                            f"write it as e.g. '{specs[0].class_type}.{name}'")
            continue
        error = check_value(specs[0], value)
        if error:
            problems.append(error)
            continue
        routed[key] = specs[0]
    if problems:
        raise GraphError("refused before submitting anything: " + "; ".join(problems) + f". Valid settings: {', '.join(valid)}")
    return routed


def staging_folder(job: Job) -> str:
    return f"{STAGING_ROOT}/{job.name}"


def build_prompt(graph: dict[str, Any], routed: dict[str, InputSpec], job: Job) -> dict[str, Any]:
    """The API prompt for one job: placeholders filled, settings applied, titles dropped."""
    prompt = copy.deepcopy(graph)
    for node in prompt.values():
        node.pop("_meta", None)
        for name, value in node["inputs"].items():
            if value == JOB_NAME:
                node["inputs"][name] = job.name
            elif value == IMAGE_FOLDER:
                node["inputs"][name] = staging_folder(job)
    for key, spec in routed.items():
        prompt[spec.node_id]["inputs"][spec.name] = job.settings[key]
    return prompt


def cleanup_prompt(folder: str) -> dict[str, Any]:
    return {"1": {"class_type": CLEANUP_CLASS, "inputs": {"folder": folder}}}
