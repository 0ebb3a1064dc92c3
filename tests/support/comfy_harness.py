"""Helpers for the integration tier: executing graphs in-process, test-only loader nodes."""

from __future__ import annotations

import asyncio
import importlib
import uuid
from pathlib import Path

import tiny_comfy
import torch


def submodule(pack, name: str):
    """e.g. submodule(pack, "adapters.session") — imported under the pack's own module name."""
    return importlib.import_module(f"{pack.__name__}.{name}")



# ---------------------------------------------------------------------------------------------
# Executing graphs in-process


class ServerStub:
    """What PromptExecutor needs of the web server: a place to send messages."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


def with_sinks(prompt: dict) -> dict:
    """Add a PreviewAny after every leaf that is not an output node, so the whole graph executes."""
    import nodes

    prompt = dict(prompt)
    consumed = {v[0] for node in prompt.values() for v in node["inputs"].values() if isinstance(v, list) and len(v) == 2}
    for node_id, node in list(prompt.items()):
        cls = nodes.NODE_CLASS_MAPPINGS[node["class_type"]]
        if node_id not in consumed and not getattr(cls, "OUTPUT_NODE", False) and cls.RETURN_TYPES:
            prompt[f"sink_{node_id}"] = {"class_type": "PreviewAny", "inputs": {"source": [node_id, 0]}}
    return prompt


def run_prompt(prompt: dict, expect_success: bool = True):
    """Validate and execute an API-format prompt; returns (outputs by node id, executor, messages)."""
    import execution

    prompt = with_sinks(prompt)
    prompt_id = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        raise AssertionError(f"prompt failed validation: {valid[1]} {valid[3]}")
    server = ServerStub()
    executor = execution.PromptExecutor(server, cache_type=False)
    executor.execute(prompt, prompt_id, {"client_id": "tests"}, valid[2])
    if expect_success and not executor.success:
        errors = [d for e, d in server.messages if e == "execution_error"]
        raise AssertionError(f"execution failed: {errors}")
    outputs = {}
    for node_id in prompt:
        entry = executor.caches.outputs.get(node_id)
        if entry is not None:
            outputs[node_id] = getattr(entry, "outputs", entry)
    return outputs, executor, server.messages


def train_prompt(name="exec_cat", steps=6, **overrides):
    """DTI Train with DTI Train Options; each override goes to whichever of the two nodes has that input."""
    main = {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "name": name, "initializer": "dog",
            "prompt": "a photo of {} on a beach", "method": "dti", "steps": steps, "learning_rate": -1.0, "resolution": 64,
            "options": ["opts", 0]}
    options = {"kappa": -1.0, "beta": 0.0, "magnitude": "mean", "magnitude_value": 0.4, "batch_size": 2, "grad_accum": -1,
               "resize": "resize and crop", "random_crop": False, "flip": False, "training_seed": 42, "templates": "object",
               "captions": "", "vectors": -1, "precision": "auto", "gradient_checkpointing": False, "checkpoint_every": 0,
               "resume": "none", "save": True, "if_exists": "increment"}
    for key, value in overrides.items():
        (main if key in main else options)[key] = value
    return {
        "1": {"class_type": "DTITestTinyCheckpoint", "inputs": {"ckpt_name": "tiny", "family": "sdxl"}},
        "2": {"class_type": "DTITestImages", "inputs": {"count": 3, "size": 64, "seed": 3}},
        "3": {"class_type": "DTITrainConcept", "inputs": main},
        "opts": {"class_type": "DTITrainOptions", "inputs": options},
    }


# ---------------------------------------------------------------------------------------------
# Test-only nodes standing in for stock loaders (stock detection needs full-size checkpoints)

TINY_CACHE: dict = {}


def tiny_objects(family: str):
    """(MODEL, text encoder, VAE) of a tiny model of the family, built once, under inference mode."""
    if family not in TINY_CACHE:
        import folder_paths

        emb = folder_paths.get_folder_paths("embeddings")
        with torch.inference_mode():
            if family == "lumina2":
                TINY_CACHE[family] = (tiny_comfy.build_lumina2_model(), tiny_comfy.build_gemma_clip(), tiny_comfy.build_flux_vae())
            elif family in ("flux", "sd3", "chroma"):
                TINY_CACHE[family] = (tiny_comfy.build_t5_model(family), tiny_comfy.build_t5_clip(family, embedding_directory=emb),
                                      tiny_comfy.build_flux_vae())
            elif family == "sana":
                path = tiny_comfy.extramodels_path()
                pack = tiny_comfy.load_extramodels(path)
                ckpt_dir = Path(folder_paths.get_temp_directory()) / "dti_tiny_checkpoints"
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                TINY_CACHE[family] = (tiny_comfy.build_sana(pack, ckpt_dir), tiny_comfy.build_hf_gemma(),
                                      tiny_comfy.build_vae(latent_channels=32))
            else:
                TINY_CACHE[family] = (tiny_comfy.build_model(family), tiny_comfy.build_clip(family, embedding_directory=emb),
                                      tiny_comfy.build_vae())
    return TINY_CACHE[family]


def register_test_nodes():
    import nodes

    class DTITestTinyCheckpoint:
        """Stands in for CheckpointLoaderSimple: (MODEL, CLIP, VAE) of a tiny random model."""

        @classmethod
        def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's V1 API names)
            return {"required": {"ckpt_name": ("STRING", {"default": "tiny"}),
                                 "family": (["sdxl", "sd1", "lumina2", "flux", "sd3", "chroma"],)}}

        RETURN_TYPES = ("MODEL", "CLIP", "VAE")
        FUNCTION = "load"
        CATEGORY = "testing"

        def load(self, ckpt_name, family):
            return tiny_objects(family)

    class DTITestImages:
        """Training images: smooth random blobs."""

        @classmethod
        def INPUT_TYPES(cls):  # noqa: N802
            return {"required": {"count": ("INT", {"default": 4}), "size": ("INT", {"default": 64}),
                                 "seed": ("INT", {"default": 3})}}

        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "make"
        CATEGORY = "testing"

        def make(self, count, size, seed):
            return (tiny_comfy.random_images(count, size, seed),)

    def sana_part(index: int, return_type: str):
        class DTITestTinySanaPart:
            """Stands in for one of ComfyUI_ExtraModels' SANA loaders (checkpoint, Gemma, VAE)."""

            @classmethod
            def INPUT_TYPES(cls):  # noqa: N802
                return {"required": {"name": ("STRING", {"default": "tiny"})}}

            RETURN_TYPES = (return_type,)
            FUNCTION = "load"
            CATEGORY = "testing"

            def load(self, name):
                return (tiny_objects("sana")[index],)

        return DTITestTinySanaPart

    def family_part(index: int, return_type: str):
        class DTITestTinyPart:
            """Stands in for UNETLoader / DualCLIPLoader / TripleCLIPLoader / VAELoader: one part of a tiny model."""

            @classmethod
            def INPUT_TYPES(cls):  # noqa: N802
                return {"required": {"name": ("STRING", {"default": "tiny"}),
                                     "family": (["flux", "sd3", "chroma", "sdxl", "sd1", "lumina2"],)}}

            RETURN_TYPES = (return_type,)
            FUNCTION = "load"
            CATEGORY = "testing"

            def load(self, name, family):
                return (tiny_objects(family)[index],)

        return DTITestTinyPart

    parts = {"DTITestTinyModel": family_part(0, "MODEL"), "DTITestTinyCLIP": family_part(1, "CLIP"),
             "DTITestTinyVAE": family_part(2, "VAE")}
    nodes.NODE_CLASS_MAPPINGS.update(parts)
    _TEST_NODES.update(parts)

    class DTITestTinyClipVision:
        """Stands in for CLIPVisionLoader: a tiny CLIP vision tower (image embeds as wide as the tiny CLIP-G's text)."""

        @classmethod
        def INPUT_TYPES(cls):  # noqa: N802
            return {"required": {"clip_name": ("STRING", {"default": "tiny"})}}

        RETURN_TYPES = ("CLIP_VISION",)
        FUNCTION = "load"
        CATEGORY = "testing"

        def load(self, clip_name):
            if "clip_vision" not in TINY_CACHE:
                with torch.inference_mode():
                    TINY_CACHE["clip_vision"] = tiny_comfy.build_clip_vision("clip")
            return (TINY_CACHE["clip_vision"],)

    nodes.NODE_CLASS_MAPPINGS["DTITestTinyClipVision"] = DTITestTinyClipVision
    _TEST_NODES.update(DTITestTinyClipVision=DTITestTinyClipVision)
    nodes.NODE_CLASS_MAPPINGS["DTITestTinyCheckpoint"] = DTITestTinyCheckpoint
    nodes.NODE_CLASS_MAPPINGS["DTITestImages"] = DTITestImages
    _TEST_NODES.update(DTITestTinyCheckpoint=DTITestTinyCheckpoint, DTITestImages=DTITestImages)
    if tiny_comfy.extramodels_path() is not None:
        sana = {"DTITestTinySana": sana_part(0, "MODEL"), "DTITestTinyGemma": sana_part(1, "GEMMA"),
                "DTITestTinySanaVAE": sana_part(2, "VAE")}
        nodes.NODE_CLASS_MAPPINGS.update(sana)
        _TEST_NODES.update(sana)


_TEST_NODES: dict = {}


def test_node_classes() -> dict:
    """The test-only node classes, for a custom-node package's NODE_CLASS_MAPPINGS."""
    return dict(_TEST_NODES)


class ProgressRecorder:
    """Installed as ComfyUI's progress-bar hook (what the server's hook receives)."""

    def __init__(self):
        self.events = []

    def __call__(self, value, total, preview_image, prompt_id=None, node_id=None):
        self.events.append({"value": value, "max": total, "preview": preview_image, "node": node_id})

    def __enter__(self):
        import comfy.utils

        self._old = comfy.utils.PROGRESS_BAR_HOOK
        comfy.utils.set_progress_bar_global_hook(self)
        return self

    def __exit__(self, *exc):
        import comfy.utils

        comfy.utils.set_progress_bar_global_hook(self._old)


def validate(prompt: dict) -> tuple[bool, str]:
    """ComfyUI's own prompt validation (what happens on Queue); returns (ok, every message as text)."""
    import execution

    valid = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), with_sinks(prompt), None))
    # ComfyUI still runs the valid outputs of a graph with some invalid nodes; any node error fails here
    return bool(valid[0]) and not valid[3], f"{valid[1]} {valid[3]}"
