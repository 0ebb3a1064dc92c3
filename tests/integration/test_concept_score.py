"""DTI Concept Score in ComfyUI's executor: its numbers equal a direct computation from ComfyUI's
CLIP-vision and CLIP outputs, and pairings without a shared embedding space are refused."""

import math

import pytest
import tiny_comfy
import torch
from comfy_harness import TINY_CACHE, run_prompt, tiny_objects


def score_prompt(clip_vision_node: dict, with_text: bool, family: str = "sdxl", prompts: str = "a dog on a beach") -> dict:
    prompt = {
        "1": {"class_type": "DTITestTinyCheckpoint", "inputs": {"ckpt_name": "tiny", "family": family}},
        "gen": {"class_type": "DTITestImages", "inputs": {"count": 3, "size": 40, "seed": 11}},
        "ref": {"class_type": "DTITestImages", "inputs": {"count": 2, "size": 56, "seed": 12}},
        "cv": clip_vision_node,
        "score": {"class_type": "DTIConceptScore", "inputs": {"generated": ["gen", 0], "reference": ["ref", 0],
                                                              "clip_vision": ["cv", 0]}},
    }
    if with_text:
        prompt["score"]["inputs"].update(clip=["1", 1], prompts=prompts)
    return prompt


TINY_CLIP_VISION = {"class_type": "DTITestTinyClipVision", "inputs": {"clip_name": "tiny"}}


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    return (a / a.norm(dim=-1, keepdim=True)) @ (b / b.norm(dim=-1, keepdim=True)).T


def test_clip_i_and_clip_t_equal_a_direct_computation(pack):
    outputs, executor, _m = run_prompt(score_prompt(TINY_CLIP_VISION, with_text=True,
                                                    prompts="a dog on a beach\na dog in the snow\na red dog"))
    similarity, alignment, table = (outputs["score"][i][0] for i in range(3))

    clip_vision = TINY_CACHE["clip_vision"]
    clip = tiny_objects("sdxl")[1]
    gen = tiny_comfy.random_images(3, 40, 11)
    ref = tiny_comfy.random_images(2, 56, 12)
    with torch.inference_mode():
        g = clip_vision.encode_image(gen)["image_embeds"]
        r = clip_vision.encode_image(ref)["image_embeds"]
        texts = [clip.encode_from_tokens(clip.tokenize(t), return_pooled=True)[1][0]
                 for t in ("a dog on a beach", "a dog in the snow", "a red dog")]
    assert similarity == pytest.approx(float(cosines(g, r).mean()), abs=1e-6)
    assert alignment == pytest.approx(float(cosines(g, torch.stack(texts)).diagonal().mean()), abs=1e-6)
    assert "CLIP-I" in table and "3 generated × 2 reference" in table and f"{alignment:.4f}" in table
    assert executor.history_result["outputs"]["score"]["text"][0] == table


def test_dino_similarity_and_no_text_without_clip(pack):
    if "dinov2" not in TINY_CACHE:
        with torch.inference_mode():
            TINY_CACHE["dinov2"] = tiny_comfy.build_clip_vision("dinov2")
    import nodes

    class TinyDino:
        @classmethod
        def INPUT_TYPES(cls):  # noqa: N802
            return {"required": {}}

        RETURN_TYPES = ("CLIP_VISION",)
        FUNCTION = "load"
        CATEGORY = "testing"

        def load(self):
            return (TINY_CACHE["dinov2"],)

    nodes.NODE_CLASS_MAPPINGS["DTITestTinyDino"] = TinyDino
    outputs, _e, _m = run_prompt(score_prompt({"class_type": "DTITestTinyDino", "inputs": {}}, with_text=False))
    similarity, alignment, table = (outputs["score"][i][0] for i in range(3))
    dino = TINY_CACHE["dinov2"]
    with torch.inference_mode():
        g = dino.encode_image(tiny_comfy.random_images(3, 40, 11))["image_embeds"]
        r = dino.encode_image(tiny_comfy.random_images(2, 56, 12))["image_embeds"]
    assert g.shape[-1] == 32  # the CLS token after the final LayerNorm
    assert similarity == pytest.approx(float(cosines(g, r).mean()), abs=1e-6)
    assert math.isnan(alignment) and "DINO" in table and "not computed" in table

    # DINOv2 with a CLIP and prompts: refused, with the reason
    _o, executor, messages = run_prompt(score_prompt({"class_type": "DTITestTinyDino", "inputs": {}}, with_text=True),
                                        expect_success=False)
    errors = [d["exception_message"] for e, d in messages if e == "execution_error"]
    assert errors and "DINOv2 has no text tower" in errors[0]


def test_clip_t_is_refused_for_towers_without_a_shared_space(pack):
    # SD1's CLIP-L (no text projection in SD checkpoints) with a CLIP vision tower
    _o, _e, messages = run_prompt(score_prompt(TINY_CLIP_VISION, with_text=True, family="sd1"), expect_success=False)
    errors = [d["exception_message"] for e, d in messages if e == "execution_error"]
    assert errors and "no CLIP-G" in errors[0] and "text projection" in errors[0]

    # SDXL's CLIP-G with a vision tower of another width (ViT-L / ViT-H against bigG)
    vision = submodule_vision(pack)
    narrow = tiny_comfy.build_clip_vision("clip", projection_dim=40)
    reason = vision.text_pairing(vision.describe(narrow), tiny_objects("sdxl")[1])
    assert reason is not None and "40 wide" in reason and "48" in reason
    assert vision.text_pairing(vision.describe(TINY_CACHE["clip_vision"]), tiny_objects("sdxl")[1]) is None


def submodule_vision(pack):
    from comfy_harness import submodule

    return submodule(pack, "adapters.vision")
