"""Every example workflow, converted to the executor's format and executed in a real ComfyUI.

Stock checkpoint loaders cannot load tiny models (detection needs full-size SDXL), so each is
swapped for a test-only loader of tiny random-weight models; every other node runs unchanged,
the stock folder image loader included. Sizes and step counts are turned down for CPU.
"""

import json
from pathlib import Path

import pytest
import safetensors.torch
import tiny_comfy
import torch
from comfy_harness import run_prompt, submodule, tiny_objects
from workflow_tools import EXAMPLES, FAMILY, NEEDS_EXTRAMODELS, WORKFLOWS, set_train_widgets, set_widgets, swap_loaders, to_api


@pytest.fixture
def user_files(pack, embeddings, comfy_dirs):
    """What a user of the examples has: concept files, an old TI embedding, a folder of photos."""
    import numpy as np
    from PIL import Image

    concept_mod, formats, vocab = submodule(pack, "dti.concept"), submodule(pack, "dti.formats"), submodule(pack, "adapters.vocab")
    enc = submodule(pack, "adapters.text_encoder").text_encoder(tiny_objects("sdxl")[1])
    fam = enc.family
    for i, name in enumerate(("my_concept", "concept_a", "concept_b")):
        g = torch.Generator().manual_seed(i)
        encs = {}
        for sub in fam.encoders:
            s, _ = vocab.stats(enc.table(sub.key))
            d = torch.randn(1, enc.table(sub.key).shape[1], generator=g)
            encs[sub.key] = concept_mod.EncoderConcept(directions=d / d.norm(), norms=torch.tensor([s.mean]), m_star=s.mean,
                                                       encoder_id=sub.encoder_id)
        formats.save_concept(concept_mod.Concept(name=name, encoders=encs, family="sdxl"), embeddings, name, "overwrite")
    safetensors.torch.save_file({"clip_l": torch.randn(1, 32) * 3, "clip_g": torch.randn(1, 48) * 3},
                                str(embeddings / "my_ti_embedding.safetensors"))
    photos = comfy_dirs["input"] / "my_concept"
    photos.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(photos / f"photo_{i}.png")
    return embeddings


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "before_refactor"


def scaled_down(workflow: dict) -> dict:
    set_train_widgets(workflow, steps=3, resolution=64, batch_size=2, if_exists="overwrite", preview_width=64,
                      preview_height=64, preview_steps=2)
    for latent in ("EmptyLatentImage", "EmptySD3LatentImage", "EmptySanaLatentImage"):
        set_widgets(workflow, latent, width=64, height=64)
    set_widgets(workflow, "KSampler", steps=2)
    return workflow


def test_every_workflow_ships_with_a_thumbnail_and_uses_stock_model_names():
    shipped = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert shipped == sorted(EXAMPLES), "workflows/ and the example definitions differ"
    for name in shipped:
        assert (WORKFLOWS / f"{name}.jpg").is_file(), f"{name}.json has no {name}.jpg thumbnail"
        wf = json.loads((WORKFLOWS / f"{name}.json").read_text())
        for node in wf["nodes"]:
            if node["type"] == "CheckpointLoaderSimple":
                assert node["widgets_values"][0] in ("sd_xl_base_1.0.safetensors", "lumina_2.safetensors",
                                                     "sd3.5_medium.safetensors")
            if node["type"] == "UNETLoader":
                assert node["widgets_values"][0] == "flux1-dev.safetensors"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_workflow_executes_in_comfyui(pack, user_files, name):
    import nodes

    if name in NEEDS_EXTRAMODELS:
        if tiny_comfy.extramodels_path() is None:
            pytest.skip("ComfyUI_ExtraModels not found in ComfyUI/custom_nodes (SANA runs through that pack)")
        tiny_comfy.load_extramodels(tiny_comfy.extramodels_path())
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
    prompt = to_api(scaled_down(swap_loaders(workflow, FAMILY.get(name, "sdxl"))))
    outputs, executor, messages = run_prompt(prompt)
    for node_id, node in prompt.items():
        cls = nodes.NODE_CLASS_MAPPINGS[node["class_type"]]
        if cls.RETURN_TYPES:
            assert node_id in outputs, f"{name}: node {node_id} ({node['class_type']}) produced no output"
            assert all(len(v) > 0 and v[0] is not None for v in outputs[node_id]), f"{name}: node {node_id} has an empty output"
        if getattr(cls, "OUTPUT_NODE", False):
            assert node_id in executor.history_result["outputs"], f"{name}: output node {node_id} showed nothing"
    saved = [v for n in executor.history_result["outputs"].values() for v in n.get("images", []) if v.get("type") == "output"]
    if any(n["class_type"] == "SaveImage" for n in prompt.values()):
        assert saved, f"{name}: no image was saved"


def test_a_graph_saved_with_the_first_dti_train_runs_with_the_same_meaning(pack, user_files):
    """The front end fills widgets by position: a graph saved with the 29-input DTI Train must still mean what it did.

    Node id DTITrain keeps its first layout (now shown as DTI Train (legacy)), so its saved widget values map onto the
    same inputs; 0 there still means the family default.
    """
    old = json.loads((FIXTURES / "dti_train_sdxl_v1.json").read_text())
    set_widgets(old, "DTITrain", steps=3, resolution=64, batch_size=2, if_exists="overwrite")
    for latent in ("EmptyLatentImage",):
        set_widgets(old, latent, width=64, height=64)
    set_widgets(old, "KSampler", steps=2)
    prompt = to_api(swap_loaders(old))
    train = next(node for node in prompt.values() if node["class_type"] == "DTITrain")
    assert train["inputs"]["learning_rate"] == 0.0 and train["inputs"]["kappa"] == -1.0  # the old "family default"
    outputs, executor, _ = run_prompt(prompt)
    train_id = next(k for k, node in prompt.items() if node["class_type"] == "DTITrain")
    concept = outputs[train_id][0][0]
    assert concept.info["steps"] == 3 and concept.info["lr"] == 0.04 and concept.info["kappa"] == 1e-4  # SDXL defaults
    assert concept.info["grad_accum"] == 1 and concept.info["n_vectors"] is None
