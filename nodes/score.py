"""DTI Concept Score: the paper's metrics for generated images of a concept, with a stock CLIP_VISION."""

from __future__ import annotations

import math

from ..adapters.images import flatten_images
from ..adapters.vision import (
    Scores,
    describe,
    image_embeds,
    mean_paired_cosine,
    mean_pairwise_cosine,
    split_prompts,
    text_embeds,
    text_pairing,
)
from ..dti.errors import InputError
from .api import io, ui
from .types import one


class DTIConceptScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DTIConceptScore",
            display_name="DTI Concept Score",
            category="DTI",
            description=(
                "The paper's metrics for images generated with a concept: image similarity to the training images "
                "(mean pairwise cosine of image embeddings — CLIP-I with a CLIP vision model, DINO with DINOv2) and, with "
                "SDXL's CLIP and the prompts, text alignment (CLIP-T: CLIP-G text vs the ViT-bigG vision tower)."
            ),
            is_input_list=True,  # image sets of mixed sizes arrive as lists (e.g. a folder of photos)
            is_output_node=True,
            inputs=[
                io.Image.Input("generated", tooltip="Images generated with the concept (a batch, or a list of batches)."),
                io.Image.Input("reference", tooltip="The concept's training images (a batch, or a list of any sizes)."),
                io.ClipVision.Input("clip_vision", tooltip="From Load CLIP Vision: CLIP ViT-L/H/bigG or SigLIP (CLIP-I), "
                                                           "DINOv2 (DINO). CLIP-T needs ViT-bigG."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Optional, for CLIP-T: SDXL's CLIP (its CLIP-G shares ViT-bigG's embedding space)."),
                io.String.Input("prompts", multiline=True, default="", optional=True,
                                tooltip="For CLIP-T: the prompt of each generated image, one per line (or one line for all), "
                                        "with the class word where the concept was, e.g. 'a dog on a beach'."),
            ],
            outputs=[
                io.Float.Output(display_name="image_similarity",
                                tooltip="Mean cosine over every generated × reference pair (CLIP-I or DINO)."),
                io.Float.Output(display_name="text_alignment",
                                tooltip="CLIP-T: mean cosine of each image with its prompt; NaN when no CLIP/prompts are connected."),
                io.String.Output(display_name="table", tooltip="The scores as a Markdown table."),
            ],
        )

    @classmethod
    def execute(cls, generated, reference, clip_vision, clip=None, prompts=None) -> io.NodeOutput:
        clip_vision, clip, prompts = one(clip_vision), one(clip), one(prompts) or ""
        vision = describe(clip_vision)
        gen, ref = flatten_images(generated), flatten_images(reference)
        gen_embeds = image_embeds(clip_vision, gen)
        similarity = mean_pairwise_cosine(gen_embeds, image_embeds(clip_vision, ref))
        alignment, note = math.nan, ""
        if clip is None or not prompts.strip():
            note = "not computed: connect SDXL's CLIP and the prompts"
        else:
            reason = text_pairing(vision, clip)
            if reason is not None:
                raise InputError(f"cannot compute CLIP-T: {reason}. Disconnect clip/prompts for image similarity only.")
            alignment = mean_paired_cosine(gen_embeds, text_embeds(clip, split_prompts(prompts, len(gen))))
        scores = Scores(vision.image_metric, similarity, alignment, len(gen), len(ref), note)
        table = scores.table()
        return io.NodeOutput(similarity, alignment, table, ui=ui.PreviewText(table))
