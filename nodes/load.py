"""DTI Load Embedding: a concept or ordinary TI file from the embeddings folder, encoded into a prompt."""

from __future__ import annotations

from ..adapters.folders import embedding_choices, file_fingerprint, placeholder_name, resolve_embedding
from ..adapters.text_encoder import text_encoder
from ..adapters.vocab import fit, load_for, rescale_to_m_star
from ..dti import formats
from . import validation
from .api import io, ui
from .types import DTIConcept, text_encoder_input

NORM_MODES = ("as saved", "rescale to m* (TI-rescaled)")


class DTILoadEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DTILoadEmbedding",
            display_name="DTI Load Embedding",
            category="DTI",
            description=(
                "Loads a DTI concept or an ordinary textual-inversion embedding (A1111 .pt, kohya, OneTrainer, diffusers, "
                "official DTI) and encodes a prompt that uses it. Works for Gemma models too, where stock "
                "embedding: prompts do nothing."
            ),
            inputs=[
                text_encoder_input("The text encoder to encode with; the file's widths must fit it"),
                io.Combo.Input("embedding", options=embedding_choices(),
                               tooltip="A file in the embeddings folder (subfolders included)."),
                io.String.Input("prompt", multiline=True, default="a photo of {} on a beach",
                                tooltip="Write {} (or embedding:<file name>) where the concept goes."),
                io.Combo.Input("norm", options=list(NORM_MODES), default=NORM_MODES[0],
                               tooltip="'rescale to m*' keeps each vector's direction and sets its norm to the encoder's "
                                       "mean vocabulary norm — the paper's fix for TI vectors that drown the prompt."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="conditioning", tooltip="The prompt encoded with the embedding."),
                DTIConcept.Output(display_name="concept", tooltip="The embedding as a concept, for Slerp, Inspector or Save."),
                io.String.Output(display_name="summary", tooltip="What was loaded: layout, vectors, norms."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, clip=None, embedding=None, prompt=None, norm=None) -> str:
        return file_fingerprint(embedding)  # re-execute when the file changes, even under the same name

    @classmethod
    def validate_inputs(cls, embedding, norm) -> bool | str:
        def exists() -> str | None:
            try:
                resolve_embedding(embedding)
            except formats.EmbeddingFileError as e:
                return str(e)
            return None

        return validation.check(cls, {"embedding": embedding, "norm": norm}, *([exists] if embedding is not None else []))

    @classmethod
    def execute(cls, clip, embedding, prompt, norm) -> io.NodeOutput:
        encoder = text_encoder(clip)
        path = resolve_embedding(embedding)
        loaded = load_for(path, encoder)
        name = placeholder_name(embedding)
        concept, notes = fit(loaded.to_concept(name=name), encoder, source=f"{path.name}")
        concept.name = name
        if norm == NORM_MODES[1]:
            concept = rescale_to_m_star(concept, encoder)
        conditioning = encoder.conditioning(name, prompt, concept.vectors())
        lines = [f"{path.name}: {loaded.layout} layout", concept.describe(), *notes]
        summary = "\n".join(lines)
        return io.NodeOutput(conditioning, concept, summary, ui=ui.PreviewText(summary))
