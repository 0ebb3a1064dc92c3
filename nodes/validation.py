"""Queue-time checks of widget values against the node's own schema, for every node's validate_inputs.

ComfyUI checks min and max itself, but skips every input that a node's validate_inputs names
(execution.validate_inputs), and it never checks the options of a V3 combo (their type is the
string "COMBO", while ComfyUI only compares values against list-typed inputs). So every node
names its combo and float inputs in validate_inputs and calls ``check`` here, which checks them
against the same schema ComfyUI shows, and adds what ComfyUI does not check: options, NaN floats
(NaN passes both `< min` and `> max`) and integer steps. tests/reliability keeps every node so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..adapters.folders import embeddings_folder
from ..dti import formats
from ..dti.settings import MAX_VECTORS
from ..dti.templates import PLACEHOLDER
from .api import io

Check = Callable[[], "str | None"]


def _values(value: Any) -> list:
    """Nodes with is_input_list=True receive lists; linked inputs arrive as None (checked at run time)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if v is not None]


def _fmt(x: float) -> str:
    return f"{x:g}"


def schema_problem(cls: type[io.ComfyNode], values: dict[str, Any]) -> str | None:
    """The first value outside its input's schema, as a message that names the input; None if all fit."""
    inputs = {i.id: i for i in cls.define_schema().inputs}
    for name, value in values.items():
        spec = inputs[name]
        for v in _values(value):
            if isinstance(spec, io.Combo.Input):
                if v not in spec.options:
                    shown = spec.options if len(spec.options) <= 20 else f"{len(spec.options)} choices"
                    return f"{name}: {v!r} is not one of the choices ({shown}); pick one from the list (refresh with R)"
                continue
            if not isinstance(spec, (io.Int.Input, io.Float.Input)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                lo = "" if spec.min is None else _fmt(spec.min)
                hi = "" if spec.max is None else _fmt(spec.max)
                return f"{name} is {v}: give a finite number in [{lo}, {hi}]"
            if spec.min is not None and v < spec.min:
                return f"{name} is {_fmt(v)}, below its minimum {_fmt(spec.min)}; give a value in [{_fmt(spec.min)}, {_fmt(spec.max)}]"
            if spec.max is not None and v > spec.max:
                return f"{name} is {_fmt(v)}, above its maximum {_fmt(spec.max)}; give a value in [{_fmt(spec.min)}, {_fmt(spec.max)}]"
            step = getattr(spec, "step", None)
            if isinstance(spec, io.Int.Input) and step and step > 1 and (v - (spec.min or 0)) % step:
                return f"{name} is {v}, not a multiple of its step {step}"
    return None


def check(cls: type[io.ComfyNode], values: dict[str, Any], *more: Check) -> bool | str:
    """validate_inputs' answer: True, or the first problem (schema first, then the node's own checks)."""
    problem = schema_problem(cls, values)
    if problem is None:
        for extra in more:
            problem = extra()
            if problem:
                break
    return problem or True


def must_be_named(cls: type[io.ComfyNode]) -> list[str]:
    """The node's FLOAT and COMBO inputs: each must be named in validate_inputs, or NaN and unknown options pass the queue."""
    return [i.id for i in cls.define_schema().inputs if isinstance(i, (io.Float.Input, io.Combo.Input))]


# -- the pack's own checks of widget values, shared by the nodes that take these inputs ------------------

def first(value):
    """The widget value of an input (None when linked: checked when the node runs)."""
    value = value[0] if isinstance(value, (list, tuple)) and value else value
    return None if isinstance(value, (list, tuple)) else value


def name_problem(name) -> str | None:
    try:
        formats.safe_name(name)
    except formats.EmbeddingFileError as e:
        return str(e)
    return None


def initializer_problem(initializer) -> str | None:
    words = str(initializer).split()
    if not words:
        return "initializer is empty: give a word close to the concept, e.g. 'dog'"
    if len(words) > MAX_VECTORS:  # every word is at least one sub-token; the exact count is checked before training
        return (f"initializer has {len(words)} words; at most {MAX_VECTORS} sub-tokens (one vector each) are allowed: "
                "use one to a few words close to the concept")
    return None


def prompt_problem(prompt, name) -> str | None:
    """A prompt that never mentions the concept (the exact tokenized check runs before training)."""
    stem = str(name).strip()
    if PLACEHOLDER in prompt or f"embedding:{stem}".lower() in prompt.lower():
        return None
    return (f"prompt {prompt[:80]!r} does not mention the concept: write {{}} or embedding:{stem} where it goes, "
            f"e.g. 'a photo of {{}} on a beach'")


def existing_file_problem(name, if_exists, save=True) -> str | None:
    """if_exists = error with a file of that name already in the embeddings folder."""
    if not save or if_exists != "error":
        return None
    try:
        formats.save_path_for(embeddings_folder(), name, if_exists)
    except formats.EmbeddingFileError as e:
        return str(e)
    return None


def train_checks(name, initializer, prompt) -> list:
    """DTI Train's own queue-time checks of the inputs that are widget values (linked ones run later)."""
    name, initializer, prompt = first(name), first(initializer), first(prompt)
    checks = []
    if name is not None:
        checks.append(lambda: name_problem(name))
    if initializer is not None:
        checks.append(lambda: initializer_problem(initializer))
    if prompt is not None and name is not None:
        checks.append(lambda: prompt_problem(prompt, name))
    return checks
