"""Full-size tier (opt-in): a full-size SD1.5 with random weights, loaded by the stock CheckpointLoaderSimple,
trained by DTI Train through the executor, used by a stock CLIPTextEncode; and a partial load of it by
ComfyUI's memory manager with a budget. Needs ~8 GB of RAM; run it alone, under the lock:

    DTI_FULLSIZE=1 flock /work/heavy.lock bash tests/run.sh tests/integration/test_fullsize.py -q -s

The checkpoint is built once into DTI_FULLSIZE_CACHE (default ~/.cache/comfyui-dti/fullsize/).
SDXL is not in the tier: loaded on a CPU it is 10 GB of fp32 UNet + 2.8 GB of text encoders before
any activation, more than a shared 24 GB machine can spare.
"""

import os
import re
import resource
import time

import pytest
import safetensors.torch
import torch
from comfy_harness import run_prompt, submodule
from memory_manager import cast_layers, vram_device
from tiny_comfy import random_images

pytestmark = pytest.mark.skipif(os.environ.get("DTI_FULLSIZE") != "1", reason="full-size tier: set DTI_FULLSIZE=1")

RESOLUTION, STEPS = 256, 4


@pytest.fixture(scope="module")
def checkpoint(comfy_dirs):
    import folder_paths
    import fullsize_checkpoint

    path = fullsize_checkpoint.sd15_checkpoint()
    folder_paths.add_model_folder_path("checkpoints", str(path.parent))
    return path.name


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def test_sd15_trains_through_the_executor_and_stock_prompts_use_the_result(pack, checkpoint, embeddings):
    name = "fullsize_cat"
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "DTITestImages", "inputs": {"count": 2, "size": RESOLUTION, "seed": 3}},
        "3": {"class_type": "DTITrainConcept", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "name": name, "initializer": "dog",
            "prompt": "a photo of {} on a beach", "method": "dti", "steps": STEPS, "learning_rate": -1.0,
            "resolution": RESOLUTION, "options": ["opts", 0]}},
        "opts": {"class_type": "DTITrainOptions", "inputs": {
            "kappa": -1.0, "beta": 0.0, "magnitude": "mean", "magnitude_value": 0.4, "batch_size": 1, "grad_accum": -1,
            "resize": "resize and crop", "random_crop": False, "flip": False, "training_seed": 42, "templates": "object",
            "captions": "", "vectors": -1, "precision": "auto", "gradient_checkpointing": False, "checkpoint_every": 0,
            "resume": "none", "save": True, "if_exists": "overwrite"}},
    }
    started = time.perf_counter()
    outputs, _, _ = run_prompt(prompt)
    wall = time.perf_counter() - started
    clip = outputs["1"][1][0]
    _concept, conditioning, _plot, summary = (outputs["3"][i][0] for i in range(4))
    s_per_step = float(re.search(r"([0-9.]+) s/step", summary).group(1))
    print(f"\nfull-size SD1.5, {RESOLUTION}², batch 1, {STEPS} steps: {s_per_step:.2f} s/step, prompt {wall:.0f} s, "
          f"peak RSS {_rss_gib():.2f} GiB\n{summary}")

    # rows at m*: the mean norm of the non-zero rows of the real-size table (49408 × 768, a few zero rows)
    table = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight.double()
    norms = table.norm(dim=-1)
    assert int((norms == 0).sum()) >= 3
    m_star = float(norms[norms > 0].mean())
    rows = safetensors.torch.load_file(str(embeddings / f"{name}.safetensors"))["emb_params"].double()
    assert torch.allclose(rows.norm(dim=-1), torch.full((rows.shape[0],), m_star, dtype=torch.float64), rtol=1e-5)

    # a stock prompt with embedding:name gives exactly DTI Train's conditioning
    stock = {"1": prompt["1"], "5": {"class_type": "CLIPTextEncode",
                                     "inputs": {"clip": ["1", 1], "text": f"a photo of embedding:{name} on a beach"}}}
    stock_cond = run_prompt(stock)[0]["5"][0][0]
    assert torch.equal(stock_cond[0][0], conditioning[0][0])
    assert torch.equal(stock_cond[0][1]["pooled_output"], conditioning[0][1]["pooled_output"])


def test_comfyui_loads_part_of_the_full_size_unet_when_the_step_needs_the_room(pack, checkpoint, embeddings):
    """A device with room for the activations plus ~1 GB of weights: ComfyUI keeps ~1 GB of the 3.4 GB UNet
    and casts the rest per layer; the vectors equal a full load's bit for bit."""
    import comfy.model_management as mm

    import nodes

    session, models, settings_mod = (submodule(pack, n) for n in ("adapters.session", "adapters.models", "dti.settings"))
    with torch.inference_mode():
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(checkpoint)[:3]
    images = random_images(1, RESOLUTION)
    settings = settings_mod.TrainSettings(name="fullsize_part", initializer="dog", steps=2, batch_size=1,
                                          resolution=RESOLUTION, seed=5, save=False)
    with torch.inference_mode():
        full = session.train_concept(model, clip, vae, images, settings)
    print(f"\n{full.summary}")
    required = models.training_memory_estimate("sd1", RESOLUTION, 1, False, torch.float32, 8)
    room = max(mm.minimum_inference_memory(), required + mm.extra_reserved_memory())
    weights_room = 1024 * 2**20
    mm.unload_all_models()
    mm.load_models_gpu([model, clip.patcher])  # fully loaded, as the full run and sampling leave it
    capacity = weights_room + clip.patcher.model_size() + room
    with vram_device(model, mm.VRAMState.NORMAL_VRAM, capacity=capacity) as log, torch.inference_mode():
        part = session.train_concept(model, clip, vae, images, settings)
    print(f"\nestimate {required / 2**20:.0f} MB, room asked {room / 2**20:.0f} MB\n{part.summary}")
    trained = log.calls[0]["models"][0]
    resident = trained.loaded_size()
    assert 0.5 * weights_room < resident <= weights_room and cast_layers(trained) > 0
    assert f"model partially loaded ({resident / 2**20:.0f} of" in part.summary
    for key in full.concept.encoders:
        assert torch.equal(full.concept.encoders[key].vectors(), part.concept.encoders[key].vectors())


def test_a_unet_fully_loaded_by_sampling_is_partially_unloaded_to_make_room_for_training(pack, checkpoint):
    """ComfyUI never shrinks a full load when a clone of the model is loaded; the pack asks it to free the
    step's room first (free_memory while the UNet is still listed), so the UNet is partially unloaded
    instead of the step running out of memory."""
    import comfy.model_management as mm

    import nodes

    session, models, text_encoder = (submodule(pack, n) for n in ("adapters.session", "adapters.models", "adapters.text_encoder"))
    with torch.inference_mode():
        model, clip, _vae = nodes.CheckpointLoaderSimple().load_checkpoint(checkpoint)[:3]
    mm.unload_all_models()  # a device holding only this checkpoint
    resolution = 512  # training needs more room than sampling (ComfyUI's floor, 1.2 GB) here: ~2.2 GB
    required = models.training_memory_estimate("sd1", resolution, 1, False, torch.float32, 8)
    room = max(mm.minimum_inference_memory(), required + mm.extra_reserved_memory())
    short = 768 * 2**20  # the device lacks this much for weights + the step's activations
    assert room - short > mm.minimum_inference_memory()  # while sampling still fits
    capacity = model.model_size() + clip.patcher.model_size() + room - short
    with vram_device(model, mm.VRAMState.NORMAL_VRAM, capacity=capacity) as log:
        mm.load_models_gpu([model, clip.patcher])  # what sampling leaves behind: everything fully loaded
        assert model.loaded_size() == model.model_size()
        encoder = text_encoder.text_encoder(clip)
        with torch.inference_mode(False), session.training_models(model, encoder, "auto", False, (resolution, 1, 8)) as patcher:
            state = models.load_state(patcher, "model")
            free_after = capacity - model.loaded_size() - clip.patcher.loaded_size()
            print(f"\n{patcher.dti_load}; free after loading {free_after / 2**20:.0f} MB, room asked {room / 2**20:.0f} MB")
    assert log.frees and log.frees[0] == room
    assert not state.full and state.cast_layers > 0, state
    assert free_after >= room * 0.99  # the step's activations fit beside the weights
