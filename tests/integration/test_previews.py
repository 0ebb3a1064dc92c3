"""Preview frames while training: at the right steps, equal to a stock KSampler run, and harmless to training."""

from dataclasses import replace

import pytest
import torch
from comfy_harness import ProgressRecorder, run_prompt, submodule

PREVIEW = {"preview_steps": 3, "preview_cfg": 2.5, "preview_sampler": "euler", "preview_scheduler": "normal",
           "preview_width": 64, "preview_height": 48, "preview_seed": 7}


def defaults_of(node_id: str) -> dict:
    """Every widget of a node at its default, as the front end would send it."""
    import nodes

    info = nodes.NODE_CLASS_MAPPINGS[node_id].GET_NODE_INFO_V1()["input"]
    out = {}
    for section in ("required", "optional"):
        for name, spec in info.get(section, {}).items():
            if isinstance(spec[0], list):
                out[name] = spec[1].get("default", spec[0][0])
            elif "default" in spec[1]:
                out[name] = spec[1]["default"]
    return out


def train_prompt(name: str, steps: int, **options) -> dict:
    """Tiny SDXL → DTI Train (+ DTI Train Options with ``options``) at 64 px, batch 2."""
    main = {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "name": name, "initializer": "dog",
            "prompt": "a photo of {} on a beach", "method": "dti", "steps": steps, "learning_rate": -1.0, "resolution": 64,
            "options": ["opts", 0]}
    return {
        "1": {"class_type": "DTITestTinyCheckpoint", "inputs": {"ckpt_name": "tiny", "family": "sdxl"}},
        "2": {"class_type": "DTITestImages", "inputs": {"count": 3, "size": 64, "seed": 3}},
        "3": {"class_type": "DTITrainConcept", "inputs": main},
        "opts": {"class_type": "DTITrainOptions", "inputs": {**defaults_of("DTITrainOptions"), "batch_size": 2, **options}},
    }


def with_stock_sampler(prompt: dict, seed=7, steps=3, cfg=2.5, width=64, height=48) -> dict:
    """EmptyLatentImage → KSampler (negative: empty prompt) → VAEDecode on DTI Train's conditioning."""
    prompt["4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}}
    prompt["5"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}}
    prompt["6"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["3", 1], "negative": ["5", 0], "latent_image": ["4", 0], "seed": seed,
        "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    prompt["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
    return prompt


def test_frames_come_at_the_preview_steps_and_equal_a_stock_ksampler_run(pack, embeddings):
    prompt = with_stock_sampler(train_prompt("prev_cat", steps=5, save=False, preview_every=2, **PREVIEW))
    with ProgressRecorder() as progress:
        outputs, _executor, _messages = run_prompt(prompt)
    concept, _cond, _plot, summary, frames = (outputs["3"][i][0] for i in range(5))
    # steps 2 and 4, and the last step
    assert frames.shape == (3, 48, 64, 3)
    assert "3 frame(s) at steps 2, 4, 5" in summary
    # the last frame is the final concept: exactly what KSampler makes from DTI Train's conditioning
    assert torch.equal(frames[2], outputs["7"][0][0][0])

    # the frame at step 2 is the concept after 2 steps: a 2-step training of the same seed, sampled stock
    short = with_stock_sampler(train_prompt("prev_cat2", steps=2, save=False))
    short_outputs, _e, _m = run_prompt(short)
    assert torch.equal(frames[0], short_outputs["7"][0][0][0])
    assert not torch.equal(frames[0], frames[2])  # the concept moved, and the frames show it

    # the node showed each new frame beside the chart at once (not throttled away)
    mine = [e for e in progress.events if e["node"] == "3"]
    shown = {e["value"]: e["preview"] for e in mine if e["preview"] is not None}
    assert {2, 4, 5} <= set(shown)
    chart_width = 640
    assert shown[2][1].size[0] > chart_width  # chart + frame side by side


def test_previews_never_change_the_training(pack, embeddings):
    """Same seed, same vectors, bit for bit, with previews on or off."""
    on, _e, _m = run_prompt(train_prompt("prev_on", steps=4, save=False, preview_every=1, **PREVIEW))
    off, _e, _m = run_prompt(train_prompt("prev_off", steps=4, save=False))
    on_vectors, off_vectors = on["3"][0][0].vectors(), off["3"][0][0].vectors()
    assert set(on_vectors) == {"clip_l", "clip_g"}
    for key in on_vectors:
        assert torch.equal(on_vectors[key], off_vectors[key]), key
    assert on["3"][4][0].shape[0] == 4
    # off: a 1×1 black image stands in for the strip
    assert off["3"][4][0].shape == (1, 1, 1, 3) and not off["3"][4][0].any()


def test_preview_defaults_come_from_the_family_table_and_bad_samplers_are_refused(pack):
    session = submodule(pack, "adapters.session")
    settings = submodule(pack, "dti.settings")
    errors = submodule(pack, "dti.errors")
    families = submodule(pack, "adapters.families")
    sdxl, lumina = families.HOST_FAMILIES["sdxl"], families.HOST_FAMILIES["lumina2"]
    with pytest.raises(errors.InputError, match="no_such_sampler.*choose one of.*euler"):
        session.resolve_settings(settings.TrainSettings(preview_every=5, preview_sampler="no_such_sampler"), sdxl)
    good = session.resolve_settings(settings.TrainSettings(preview_every=5), sdxl)
    row = sdxl.preview
    assert (good.preview_steps, good.preview_cfg, good.preview_sampler, good.preview_scheduler, good.preview_width,
            good.preview_height) == (row.steps, row.cfg, row.sampler, row.scheduler, row.size, row.size)
    other = session.resolve_settings(settings.TrainSettings(preview_every=5, preview_cfg=3.0), lumina)
    assert (other.preview_sampler, other.preview_cfg) == ("res_multistep", 3.0)


@pytest.mark.parametrize("family", ["lumina2", "sana"])
def test_gemma_families_preview_without_changing_the_training(pack, embeddings, family):
    """Lumina 2 (res_multistep by default) and SANA (its own text-encode node for the negative) render frames too."""
    import tiny_comfy

    if family == "sana":
        if tiny_comfy.extramodels_path() is None:
            pytest.skip("ComfyUI_ExtraModels not found in ComfyUI/custom_nodes (SANA runs through that pack)")
        tiny_comfy.load_extramodels(tiny_comfy.extramodels_path())
    from comfy_harness import tiny_objects

    session, settings = submodule(pack, "adapters.session"), submodule(pack, "dti.settings")
    model, clip, vae = tiny_objects(family)
    images = tiny_comfy.random_images(2, 64, 3)
    down = 32 if family == "sana" else 8
    base = settings.TrainSettings(name=f"prev_{family}", steps=2, batch_size=1, grad_accum=1, resolution=2 * down,
                                  save=False)
    previewing = replace(base, preview_every=1, preview_steps=2, preview_width=2 * down, preview_height=2 * down)
    on = session.train_concept(model, clip, vae, images, previewing, prompt="a photo of {}")
    off = session.train_concept(model, clip, vae, images, base, prompt="a photo of {}")
    assert [f.step for f in on.previews.frames] == [1, 2] and off.previews is None
    assert on.previews.strip().shape == (2, 2 * down, 2 * down, 3)
    assert on.settings.preview_sampler == on.family.preview.sampler
    for key, rows in on.concept.vectors().items():
        assert torch.equal(rows, off.concept.vectors()[key])
