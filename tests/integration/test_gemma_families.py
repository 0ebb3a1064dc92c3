"""Gemma-2 concepts: Lumina 2 through ComfyUI's own Gemma and NextDiT, and SANA through
ComfyUI_ExtraModels' real SanaCheckpointLoader / SanaTextEncode (skipped when that pack is absent).

Both pass the DTI Train checks (norms at m*, fixed-batch loss falls, a non-zero gradient through
the real encoder and model), work in Load / Slerp / Inspector, refuse each other's files (gemma-2-2b
and gemma-2-2b-it are different spaces), and recover a hidden direction. Tiny random Gemma models
are poorly conditioned in the token direction, so recovery asserts a rise of at least +0.25 in
cosine averaged over 3 seeds, measured with the concept alone in the prompt (the Lumina 2 system
prompt and SANA's ~290-token instruction each drown a single token: with them the rise was ≈0 and
≈+0.1) and a one-piece initializer (two rows of one concept are identifiable only up to mixing).
"""

import re

import pytest
import safetensors
import safetensors.torch
import tiny_comfy
import torch
from comfy_harness import run_prompt, submodule, tiny_objects
from recovery import run_recovery
from tiny_comfy import random_images

EXTRAMODELS = tiny_comfy.extramodels_path()
needs_extramodels = pytest.mark.skipif(
    EXTRAMODELS is None, reason="ComfyUI_ExtraModels not found in ComfyUI/custom_nodes (SANA runs through that pack)")


def train(pack, family, fixed_batch_eval=None, **kw):
    session = submodule(pack, "adapters.session")
    model, clip, vae = tiny_objects(family)
    base = dict(name=f"{family}_cat", initializer="dog", steps=30, batch_size=2, grad_accum=2, resolution=64, seed=3)
    base.update(kw)
    with torch.inference_mode():
        return session.train_concept(model, clip, vae, random_images(2, 64), submodule(pack, "dti.settings").TrainSettings(**base),
                                     on_step=fixed_batch_eval)


def fixed_batch_probe(pack, log):
    tr = submodule(pack, "dti.trainer")

    def on_step(t, record):
        if record.step == 1:
            log["grad"] = {k: float(p.grad.norm()) for k, p in t.params.items()}
            ex = t.sampler.examples[:2]
            ch, cw = t.sampler.crop_size
            log["batch"] = tr.Batch(torch.stack([e.latent[:, :ch, :cw] for e in ex]), ["a photo of a {}"] * 2,
                                    [e.original_size for e in ex], [(0, 0)] * 2, (ch * 8, cw * 8))
        if record.step in (1, t.settings.steps):
            log[record.step] = t.eval_loss(log["batch"], seed=11, repeats=6)
        log.setdefault("norms", []).append(record.norms["gemma"])

    return on_step


def check_training(pack, family, res, log, encoder_id):
    encoders, vocab = submodule(pack, "adapters.text_encoder"), submodule(pack, "adapters.vocab")
    table = encoders.text_encoder(tiny_objects(family)[1]).table("gemma").double()
    norms = table.norm(dim=-1)
    m_star = float(norms[norms > 0].mean())
    assert vocab  # the pack's vocabulary helpers are importable under its module name
    assert log["grad"]["gemma"] > 0, "no gradient reached the concept through the encoder and model"
    assert log[res.result.history[-1].step] < log[1], log
    assert all(abs(n / m_star - 1) < 1e-5 for n in log["norms"])
    saved = safetensors.torch.load_file(str(res.saved_path))
    assert list(saved) == ["gemma"]
    assert torch.allclose(saved["gemma"].double().norm(dim=-1), torch.full((saved["gemma"].shape[0],), m_star, dtype=torch.float64),
                          rtol=1e-5)
    with safetensors.safe_open(str(res.saved_path), "pt") as f:
        assert f'"encoder_id": "{encoder_id}"' in f.metadata()["dti"]
    assert "DTI Load Embedding" in res.summary and "embedding:" not in res.summary.split("saved")[1].split("(")[0]


def mean_rise(pack, family, steps):
    rises, figures = [], []
    for seed in (0, 1, 2):
        start, end = run_recovery(pack, tiny_objects(family), steps=steps, seed=seed, batch=2, size=64, bare_prompt=True)
        rises.append(end["gemma"] - start["gemma"])
        figures.append(f"seed {seed}: {start['gemma']:+.3f} → {end['gemma']:+.3f}")
    print(f"{family} hidden-direction recovery ({steps} steps): " + "; ".join(figures) + f"; mean rise {sum(rises) / 3:+.3f}")
    return sum(rises) / 3


# ---------------------------------------------------------------------------------------------
# Lumina 2


def test_lumina2_training_passes_the_train_checks(pack, embeddings):
    log = {}
    res = train(pack, "lumina2", fixed_batch_eval=fixed_batch_probe(pack, log), captions="a photo of a {}")
    check_training(pack, "lumina2", res, log, "gemma-2-2b")


def test_lumina2_concept_in_load_slerp_inspector_and_a_stock_sampler(pack, embeddings):
    train(pack, "lumina2", name="lum_a", steps=2)
    train(pack, "lumina2", name="lum_b", steps=2, seed=9)
    loader = {"class_type": "DTITestTinyCheckpoint", "inputs": {"ckpt_name": "tiny", "family": "lumina2"}}

    def load(name):
        return {"class_type": "DTILoadEmbedding", "inputs": {"clip": ["1", 1], "embedding": f"{name}.safetensors",
                                                              "prompt": "a photo of {} in snow", "norm": "as saved"}}

    prompt = {"1": loader, "2": load("lum_a"), "3": load("lum_b"),
              "4": {"class_type": "DTISlerpConcepts", "inputs": {"clip": ["1", 1], "concept_a": ["2", 1], "concept_b": ["3", 1],
                                                                 "prompt": "a photo of {}", "mode": "slerp", "t": 0.5,
                                                                 "t_values": "0, 0.5, 1", "weights": ""}},
              "5": {"class_type": "DTINormInspector", "inputs": {"clip": ["1", 1], "concept": ["4", 1], "k": 4}},
              "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "7": {"class_type": "CLIPTextEncodeLumina2", "inputs": {"clip": ["1", 1], "system_prompt": "superior",
                                                                     "user_prompt": "blurry"}},
              "8": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["7", 0],
                                                         "latent_image": ["6", 0], "seed": 1, "steps": 2, "cfg": 4.0,
                                                         "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
              "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}}}
    outputs, _, _ = run_prompt(prompt)
    cond = outputs["2"][0][0]
    assert cond[0][0].shape[-1] == 32 and "attention_mask" in cond[0][1]
    strip = outputs["4"][0][0]
    assert strip[0][0].shape[0] == 3 and strip[0][1]["attention_mask"].shape[0] == 3
    report = outputs["5"][0][0]
    assert "[gemma]" in report and "not applicable" in report and "rotary" in report
    assert outputs["9"][0][0].shape == (1, 64, 64, 3)


def test_gemma_2b_and_2b_it_concepts_are_not_mixed(pack, embeddings):
    concept_mod, formats = submodule(pack, "dti.concept"), submodule(pack, "dti.formats")
    v = torch.randn(1, 32)
    enc = concept_mod.EncoderConcept(directions=v / v.norm(), norms=torch.tensor([0.11]), m_star=0.11,
                                     encoder_id="gemma-2-2b-it")
    formats.save_concept(concept_mod.Concept(name="from_sana", encoders={"gemma": enc}, family="sana"), embeddings, "from_sana")
    prompt = {"1": {"class_type": "DTITestTinyCheckpoint", "inputs": {"ckpt_name": "tiny", "family": "lumina2"}},
              "2": {"class_type": "DTILoadEmbedding", "inputs": {"clip": ["1", 1], "embedding": "from_sana.safetensors",
                                                                 "prompt": "{}", "norm": "as saved"}}}
    _, _, messages = run_prompt(prompt, expect_success=False)
    err = [d for e, d in messages if e == "execution_error"][0]
    assert re.search(r"trained on gemma-2-2b-it.*is gemma-2-2b.*different embedding spaces", err["exception_message"])


def test_lumina2_hidden_direction_recovery_rises(pack, embeddings):
    assert mean_rise(pack, "lumina2", steps=120) >= 0.25


# ---------------------------------------------------------------------------------------------
# SANA through ComfyUI_ExtraModels


@needs_extramodels
def test_sana_encode_reproduces_extramodels_sana_text_encode_exactly(pack, embeddings):
    import importlib

    model, gemma, _vae = tiny_objects("sana")
    sana_nodes = importlib.import_module(tiny_comfy.load_extramodels(EXTRAMODELS).__name__ + ".Sana.nodes")
    encoder = submodule(pack, "adapters.text_encoder").text_encoder(gemma)
    piece = gemma["tokenizer"].convert_tokens_to_ids("▁sks")  # one piece: the literal prompt has the same tokens
    with torch.inference_mode():
        (stock,) = sana_nodes.SanaTextEncode().encode("a photo of sks on a beach", gemma)
        ours = encoder.conditioning("x", "a photo of {} on a beach", {"gemma": encoder.table("gemma")[[piece]].float()})
    assert stock[0][0].shape == ours[0][0].shape == (1, 1, 300, 32)
    assert torch.equal(stock[0][0], ours[0][0])


@needs_extramodels
def test_sana_training_passes_the_train_checks_and_keeps_models_frozen(pack, embeddings):
    import comfy.samplers

    model, gemma, _vae = tiny_objects("sana")
    before = {"sana": next(model.model.diffusion_model.parameters()).detach().clone(),
              "gemma": gemma["text_encoder"].get_input_embeddings().weight.detach().clone()}
    modes = []
    log = {}
    probe = fixed_batch_probe(pack, log)

    def on_step(t, record):
        probe(t, record)
        modes.append((model.model.diffusion_model.training, gemma["text_encoder"].training))

    res = train(pack, "sana", fixed_batch_eval=on_step, captions="a photo of a {}")
    check_training(pack, "sana", res, log, "gemma-2-2b-it")
    assert not any(any(m) for m in modes), "a model was switched to training mode"
    assert torch.equal(next(model.model.diffusion_model.parameters()).detach(), before["sana"])
    assert torch.equal(gemma["text_encoder"].get_input_embeddings().weight.detach(), before["gemma"])
    assert not any(p.requires_grad for p in gemma["text_encoder"].parameters())
    assert not hasattr(comfy.samplers.sampling_function, "_sana_cfg_patched")  # the pack's global patch stayed off


@needs_extramodels
def test_sana_batches_only_identical_prompts(pack, embeddings):
    model, _gemma, _vae = tiny_objects("sana")
    calls = []
    original = model.model.apply_model

    def counting(x, t, **kw):
        calls.append(x.shape[0])
        return original(x, t, **kw)

    model.model.apply_model = counting
    try:
        train(pack, "sana", name="mixed_prompts", steps=1, batch_size=2, grad_accum=1, save=False)
        assert calls == [1, 1]  # two different templates: one forward each
        calls.clear()
        train(pack, "sana", name="same_prompt", steps=1, batch_size=2, grad_accum=1, save=False, captions="a photo of {}")
        assert calls == [2]
    finally:
        del model.model.apply_model


@needs_extramodels
def test_sana_concept_in_load_slerp_inspector_and_a_sampler(pack, embeddings):
    train(pack, "sana", name="sana_a", steps=2)
    train(pack, "sana", name="sana_b", steps=2, seed=9)

    def load(name):
        return {"class_type": "DTILoadEmbedding", "inputs": {"clip": ["g", 0], "embedding": f"{name}.safetensors",
                                                              "prompt": "a photo of {} in snow", "norm": "as saved"}}

    prompt = {"m": {"class_type": "DTITestTinySana", "inputs": {"name": "tiny"}},
              "g": {"class_type": "DTITestTinyGemma", "inputs": {"name": "tiny"}},
              "v": {"class_type": "DTITestTinySanaVAE", "inputs": {"name": "tiny"}},
              "2": load("sana_a"), "3": load("sana_b"),
              "4": {"class_type": "DTISlerpConcepts", "inputs": {"clip": ["g", 0], "concept_a": ["2", 1], "concept_b": ["3", 1],
                                                                 "prompt": "a photo of {}", "mode": "slerp", "t": 0.5,
                                                                 "t_values": "0:1:3", "weights": ""}},
              "5": {"class_type": "DTINormInspector", "inputs": {"clip": ["g", 0], "concept": ["4", 1], "k": 4}},
              "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "7": {"class_type": "SanaTextEncode", "inputs": {"text": "blurry", "GEMMA": ["g", 0]}},
              "8": {"class_type": "LatentUpscale", "inputs": {"samples": ["6", 0], "upscale_method": "nearest-exact",
                                                              "width": 64, "height": 64, "crop": "disabled"}}}
    outputs, _, _ = run_prompt(prompt)
    cond = outputs["2"][0][0][0][0]
    assert cond.shape == (1, 1, 300, 32)
    assert int(((cond != 0).sum(-1) > 0).sum()) < 300  # padding rows are exactly zero
    assert outputs["4"][0][0][0][0].shape == (3, 1, 300, 32)
    assert "not applicable" in outputs["5"][0][0]


@needs_extramodels
def test_sana_hidden_direction_recovery_rises(pack, embeddings):
    assert mean_rise(pack, "sana", steps=240) >= 0.25


@needs_extramodels
def test_sana_training_encode_with_cached_instruction_matches_the_full_encode(pack, embeddings):
    model, gemma, _vae = tiny_objects("sana")
    encoder = submodule(pack, "adapters.text_encoder").text_encoder(gemma)
    prompts = ["a photo of {} on a beach", "{}", "the dog next to {} in a very busy city street at dusk"]
    session = submodule(pack, "adapters.session")
    with (torch.inference_mode(False), torch.enable_grad(), session.training_models(model, encoder),
          encoder.text_side("x") as side):
        rows = {"gemma": encoder.table("gemma")[[5, 9]].float().clone().requires_grad_(True)}
        side.bind_rows({"gemma": 2})
        fast = side.encode(prompts, rows).cross_attn
        assert side._prefix, "the instruction cache was not used"
        full = side._encode_full([side.prepare(p) for p in prompts], rows).cross_attn
        assert fast.shape == full.shape == (3, 1, 300, 32)
        assert torch.allclose(fast, full, atol=1e-5), float((fast - full).abs().max())
        assert torch.equal(fast == 0, full == 0)  # the same rows are padding
        fast.sum().backward()
        assert float(rows["gemma"].grad.norm()) > 0


@needs_extramodels
def test_sana_instruction_can_be_turned_off_for_training_and_use(pack, embeddings):
    _model, gemma, _vae = tiny_objects("sana")
    prompt = {"g": {"class_type": "DTITestTinyGemma", "inputs": {"name": "tiny"}},
              "i": {"class_type": "DTISanaInstruction", "inputs": {"gemma": ["g", 0], "instruction": "none"}}}
    outputs, _, _ = run_prompt(prompt)
    plain = outputs["i"][0][0]
    assert plain["text_encoder"] is gemma["text_encoder"] and "dti_instruction" not in gemma  # the input is not mutated
    encoders = submodule(pack, "adapters.text_encoder")
    with_instruction, without = encoders.text_encoder(gemma), encoders.text_encoder(plain)
    assert with_instruction.instruction and without.instruction == ""
    rows = {"gemma": with_instruction.table("gemma")[[7]].float()}
    with torch.inference_mode():
        a = with_instruction.conditioning("x", "a photo of {}", rows)[0][0]
        b = without.conditioning("x", "a photo of {}", rows)[0][0]
    assert a.shape == b.shape == (1, 1, 300, 32) and not torch.allclose(a, b)
    res = train(pack, "sana", name="no_instruction", steps=2, save=False)
    assert res.result.history[-1].step == 2


@needs_extramodels
def test_sana_prompts_accept_embedding_markers_in_any_case(pack, embeddings):
    _model, gemma, _vae = tiny_objects("sana")
    encoder = submodule(pack, "adapters.text_encoder").text_encoder(gemma)
    rows = {"gemma": encoder.table("gemma")[[7]].float()}
    with torch.inference_mode():
        braces = encoder.conditioning("My_Cat", "a photo of {} on a beach", rows)[0][0]
        marker = encoder.conditioning("My_Cat", "a photo of embedding:my_cat on a beach", rows)[0][0]
    assert torch.equal(braces, marker)
