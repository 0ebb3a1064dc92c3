"""Socket types private to the pack."""

from .api import io

# A learned or loaded concept (dti.concept.Concept), passed between DTI nodes.
DTIConcept = io.Custom("DTI_CONCEPT")

# DTI Train Options' settings (a dict of input name → value), for DTI Train's options input.
DTITrainOptions = io.Custom("DTI_TRAIN_OPTIONS")

# ComfyUI_ExtraModels' Gemma loader output (SANA's text encoder): a dict with an HF tokenizer and model.
Gemma = io.Custom("GEMMA")


def one(value):
    """An input's value on a node with is_input_list=True, which receives every input as a list; only the
    list-shaped inputs (images) are used whole."""
    return value[0] if isinstance(value, list) else value


def text_encoder_input(tooltip: str, optional: bool = False) -> io.MultiType.Input:
    """The text-encoder socket of every DTI node: ComfyUI's CLIP, or a GEMMA for SANA."""
    return io.MultiType.Input("clip", types=[io.Clip, Gemma], optional=optional,
                              tooltip=tooltip + " (CLIP, or GEMMA from ComfyUI_ExtraModels for SANA)")
