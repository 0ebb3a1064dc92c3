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
