"""DTI Norm Inspector: where an embedding's norm sits against the vocabulary, and what that does."""

from __future__ import annotations

import torch

from ..adapters.folders import embedding_choices, file_fingerprint, resolve_embedding
from ..adapters.plots import norm_histogram, stack_vertically, to_image_tensor
from ..adapters.text_encoder import text_encoder
from ..adapters.vocab import fit, load_for, stats
from ..dti import diagnostics, magnitude
from ..dti.concept import Concept
from ..dti.errors import InputError
from . import validation
from .api import io, ui
from .types import DTIConcept, text_encoder_input

NO_FILE = "(none)"


def _positional(encoder, key: str, rows: torch.Tensor, m_star: float, norms: torch.Tensor) -> str:
    probe = encoder.position_probe(key)
    if probe is None:
        return ("positional attenuation: not applicable — this encoder adds no position table to its tokens (rotary "
                "positions in Gemma, relative position biases in T5's attention), so there is no additive position "
                "signal for a large norm to drown")
    position_table, ln = probe
    positions = position_table.detach().float().cpu()
    vocab = encoder.table(key).detach()
    g = torch.Generator().manual_seed(0)
    ids = torch.nonzero(norms > 0).flatten()
    sample = vocab[ids[torch.randperm(ids.numel(), generator=g)[:384]]].float().cpu()
    w = None if ln.weight is None else ln.weight.detach().float().cpu()
    b = None if ln.bias is None else ln.bias.detach().float().cpu()
    now = diagnostics.positional_attenuation(rows, positions, sample, w, b, ln.eps)
    at_m = diagnostics.positional_attenuation(rows / rows.norm(dim=-1, keepdim=True) * m_star, positions, sample, w, b, ln.eps)
    return (f"positional attenuation after the first LayerNorm: {now.summary()}; the same directions at m* would score "
            f"{at_m.probe_accuracy:.2f} (signal {at_m.signal_ratio:.2f}×)")


def inspect(concept: Concept, encoder, k: int, title: str) -> tuple[str, list]:
    lines = [f"== {title} ({concept.method}) =="]
    images = []
    for key, enc in concept.encoders.items():
        tab = encoder.table(key)
        s, norms = stats(tab)
        m_star = magnitude.target_norm(s, "mean")
        vectors = enc.vectors()
        lines.append(f"[{key}] vocabulary: {s.count} rows, norm mean {s.mean:.4g}, median {s.median:.4g}, "
                     f"range {s.min:.4g}–{s.max:.4g} → m* (mean) = {m_star:.4g}")
        for i, row in enumerate(vectors):
            n = float(row.norm())
            v = magnitude.verdict(s, n)
            lines.append(f"  row {i}: {'IN' if v.in_distribution else 'OUT OF'} distribution — {v.reason}")
            cos_s, cos_i = magnitude.nearest_tokens(tab, row, k=k, metric="cosine", norms=norms)
            euc_s, euc_i = magnitude.nearest_tokens(tab, row, k=k, metric="euclidean", norms=norms)
            cos_tok = encoder.decode(key, cos_i[0].tolist())
            euc_tok = encoder.decode(key, euc_i[0].tolist())
            lines.append("    nearest by cosine:    " + ", ".join(f"{t} ({float(x):.3f})" for t, x in zip(cos_tok, cos_s[0])))
            lines.append("    nearest by Euclidean: " + ", ".join(f"{t} ({float(x):.3f})" for t, x in zip(euc_tok, euc_s[0])))
        lines.append("  " + _positional(encoder, key, vectors, m_star, norms))
        marks = [("m*", m_star)] + [(f"row {i}", float(r.norm())) for i, r in enumerate(vectors)]
        images.append(norm_histogram(s.sorted_norms, marks, f"{title} - {key}: norms vs vocabulary"))
    lines.append("Cosine neighbours reflect meaning; Euclidean neighbours of an inflated vector are just the largest "
                 "tokens. Rows far above the vocabulary drown the position signal and dominate attention.")
    return "\n".join(lines), images


class DTINormInspector(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DTINormInspector",
            display_name="DTI Norm Inspector",
            category="DTI",
            description=(
                "Shows where an embedding's vector norms sit against the encoder's vocabulary (histogram, percentile, "
                "verdict), its nearest tokens by cosine and by Euclidean distance, and how much position signal survives "
                "the first LayerNorm at that norm — why inflated TI vectors lose the rest of the prompt."
            ),
            inputs=[
                text_encoder_input("The text encoder whose vocabulary is the reference"),
                DTIConcept.Input("concept", optional=True, tooltip="A concept from DTI Train, Load or Slerp."),
                io.Combo.Input("embedding", options=[NO_FILE] + embedding_choices(), default=NO_FILE, optional=True,
                               tooltip="Or any embedding file from the embeddings folder."),
                io.Int.Input("k", default=8, min=1, max=50, optional=True, tooltip="How many nearest tokens to list."),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="The diagnosis in words and numbers."),
                io.Image.Output(display_name="chart", tooltip="Norm histograms of the vocabulary with the vectors marked."),
            ],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, clip=None, concept=None, embedding=None, k=None) -> str:
        return f"{embedding}" if embedding in (None, NO_FILE) else file_fingerprint(embedding)

    @classmethod
    def validate_inputs(cls, embedding=NO_FILE) -> bool | str:
        return validation.check(cls, {"embedding": embedding})

    @classmethod
    def execute(cls, clip, concept=None, embedding=NO_FILE, k=8) -> io.NodeOutput:
        encoder = text_encoder(clip)
        sources = []
        if concept is not None:
            sources.append((fit(concept, encoder)[0], f"concept {concept.name}"))
        if embedding not in (None, NO_FILE):
            path = resolve_embedding(embedding)
            loaded = load_for(path, encoder)
            sources.append((fit(loaded.to_concept(), encoder, source=path.name)[0], f"{path.name} [{loaded.layout}]"))
        if not sources:
            raise InputError("nothing to inspect: connect a concept or pick an embedding file")
        reports, images = [], []
        for c, title in sources:
            text, imgs = inspect(c, encoder, int(k), title)
            reports.append(text)
            images.extend(imgs)
        report = "\n\n".join(reports)
        chart = to_image_tensor(stack_vertically(images))
        return io.NodeOutput(report, chart, ui={**ui.PreviewImage(chart, cls=cls).as_dict(), "text": (report,)})
