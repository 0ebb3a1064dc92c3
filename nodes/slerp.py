"""DTI Slerp Concepts: blend concepts on the sphere, one CONDITIONING per t in a single batch."""

from __future__ import annotations

import torch

from ..adapters.text_encoder import text_encoder
from ..adapters.vocab import fit
from ..dti.blend import MAX_T_VALUES, MODES, BlendError, interpolate, parse_t_values, parse_weights, weighted_mean
from . import validation
from .api import io, ui
from .types import DTIConcept, text_encoder_input

BLEND_NAME = "blend"


def batch_conditionings(conds: list[list]) -> list:
    """[[cond, extras]] per t → one CONDITIONING whose batch holds every t (for one KSampler run)."""
    tensors = torch.cat([c[0][0] for c in conds], dim=0)
    extras = {}
    for key, value in conds[0][0][1].items():
        if isinstance(value, torch.Tensor) and all(isinstance(c[0][1].get(key), torch.Tensor) for c in conds):
            extras[key] = torch.cat([c[0][1][key] for c in conds], dim=0)
        else:
            extras[key] = value
    return [[tensors, extras]]


class DTISlerpConcepts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DTISlerpConcepts",
            display_name="DTI Slerp Concepts",
            category="DTI",
            description=(
                "Spherical interpolation between two concepts — each vector's direction moves along the great circle at "
                "fixed norm — or a weighted spherical mean of up to four. A list of t values gives one conditioning per t "
                "in one batch: set the latent batch size to the number of t values to render the strip in one run."
            ),
            inputs=[
                text_encoder_input("Text encoder used to encode the prompt with each blend"),
                DTIConcept.Input("concept_a", tooltip="The concept at t = 0."),
                DTIConcept.Input("concept_b", tooltip="The concept at t = 1."),
                io.String.Input("prompt", multiline=True, default="a photo of {} on a beach",
                                tooltip="Write {} where the blended concept goes."),
                io.Combo.Input("mode", options=list(MODES), default="slerp",
                               tooltip="slerp: great-circle path at constant norm (DTI). lerp: straight line between the "
                                       "vectors, whose norm dips mid-way — for comparison."),
                io.Float.Input("t", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Position between a (0) and b (1) for the concept output, and the conditioning "
                                       "when t_values is empty."),
                io.String.Input("t_values", default="", optional=True,
                                tooltip="Optional list for an interpolation strip: '0, 0.25, 0.5, 0.75, 1' or '0:1:5' "
                                        f"(start:stop:count). Each must lie in [0, 1]; at most {MAX_T_VALUES} values."),
                DTIConcept.Input("concept_c", optional=True, tooltip="Optional third concept: switches to a weighted mean."),
                DTIConcept.Input("concept_d", optional=True, tooltip="Optional fourth concept for the weighted mean."),
                io.String.Input("weights", default="", optional=True,
                                tooltip="Weights for the mean of 3–4 concepts, e.g. '1, 1, 2' (equal when empty)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="conditioning",
                                       tooltip="The prompt per t value, batched (batch size = number of t values)."),
                DTIConcept.Output(display_name="concept", tooltip="The blend at t (or the weighted mean), to save or reuse."),
                io.String.Output(display_name="summary", tooltip="What was blended and the resulting norms."),
            ],
        )

    @classmethod
    def validate_inputs(cls, mode, t, t_values=None, weights=None) -> bool | str:
        def parses() -> str | None:
            try:
                parse_t_values(t_values or "")
                parse_weights(weights or "")
            except BlendError as e:
                return str(e)
            return None

        return validation.check(cls, {"mode": mode, "t": t}, parses)

    @classmethod
    def execute(cls, clip, concept_a, concept_b, prompt, mode, t, t_values="", concept_c=None, concept_d=None,
                weights="") -> io.NodeOutput:
        encoder = text_encoder(clip)
        concepts = [c for c in (concept_a, concept_b, concept_c, concept_d) if c is not None]
        if len(concepts) < 2:
            raise BlendError("connect at least two concepts (concept_a and concept_b)")
        fitted = [fit(c, encoder)[0] for c in concepts]
        lines = []
        if len(fitted) > 2:
            blend = weighted_mean(fitted, parse_weights(weights), name=BLEND_NAME)
            blends = [blend]
            lines.append(f"weighted spherical mean of {', '.join(c.name for c in fitted)} with weights "
                         f"{[round(x, 4) for x in blend.info['weights']]} (t and mode do not apply)")
        else:
            ts = parse_t_values(t_values) or [float(t)]
            blends = [interpolate(fitted[0], fitted[1], x, mode, name=BLEND_NAME) for x in ts]
            blend = interpolate(fitted[0], fitted[1], float(t), mode, name=BLEND_NAME)
            lines.append(f"{mode} {fitted[0].name} → {fitted[1].name} at t = {', '.join(f'{x:g}' for x in ts)} "
                         f"(batch of {len(ts)}); concept output at t = {float(t):g}")
        conds = [encoder.conditioning(BLEND_NAME, prompt, b.vectors()) for b in blends]
        for b in blends:
            norms = "; ".join(f"{k} ‖e‖ {', '.join(f'{float(n):.4g}' for n in e.norms)}" for k, e in b.encoders.items())
            lines.append(f"t={b.info.get('t', 'mean')}: {norms}")
        summary = "\n".join(lines)
        return io.NodeOutput(batch_conditionings(conds), blend, summary, ui=ui.PreviewText(summary))
