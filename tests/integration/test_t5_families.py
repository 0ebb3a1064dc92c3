"""Flux.1, SD3.5 and Chroma concepts through ComfyUI's real CLIP-L / CLIP-G / T5-XXL encoders and DiTs.

Tiny random-weight models built with ComfyUI's own classes and its shipped T5 tokenizer (32100
ids over a 32128-row table). Flux's and Chroma's T5 is 48 wide; SD3's must be 4096 wide (see
tiny_comfy.build_t5_clip).
"""

import pytest
import safetensors.torch
import torch
from comfy_harness import submodule, tiny_objects
from tiny_comfy import T5_REACHABLE, random_images

T5_FAMILIES = ("flux", "sd3", "chroma")


def train(pack, objects, **kw):
    session = submodule(pack, "adapters.session")
    settings = dict(name="t5cat", initializer="dog", steps=3, batch_size=2, grad_accum=1, resolution=64, seed=7)
    settings.update(kw)
    model, clip, vae = objects
    with torch.inference_mode():  # the executor's context
        return session.train_concept(model, clip, vae, random_images(2, 64),
                                     submodule(pack, "dti.settings").TrainSettings(**settings))


def t5_of(clip):
    return clip.cond_stage_model.t5xxl.transformer.get_input_embeddings().weight


# ---------------------------------------------------------------------------------------------
# The family table and the T5 vocabulary


def test_t5_rows_the_tokenizer_can_produce_are_the_family_tables_reachable_rows(pack, embeddings):
    families = submodule(pack, "dti.families")
    encoders = submodule(pack, "adapters.text_encoder")
    clip = tiny_objects("flux")[1]
    tok = clip.tokenizer.t5xxl.tokenizer
    assert len(tok) == T5_REACHABLE == families.T5XXL.reachable_rows
    ids = tok("a photo of a dog, extra_id tokens <extra_id_0> and ünïcödé")["input_ids"]
    assert max(ids) < T5_REACHABLE <= t5_of(clip).shape[0] - 28
    table = encoders.text_encoder(clip).table("t5xxl")
    assert table.shape[0] == T5_REACHABLE
    norms = t5_of(clip).detach().double().norm(dim=-1)
    with encoders.text_encoder(clip).text_side("x") as text:
        m_star = submodule(pack, "dti.magnitude").norm_stats(text.vocabulary("t5xxl")).mean
    assert m_star == pytest.approx(float(norms[:T5_REACHABLE].mean()), rel=1e-6)
    assert abs(float(norms.mean()) / m_star - 1) > 1e-3  # the 28 unreachable rows would have moved it
    print(f"tiny T5 m*: reachable rows {m_star:.5f}, all 32128 rows {float(norms.mean()):.5f}")


@pytest.mark.parametrize("family", T5_FAMILIES)
def test_clip_and_model_are_recognized_and_mismatches_refused(pack, family):
    families = submodule(pack, "adapters.families")
    errors = submodule(pack, "dti.errors")
    model, clip, _vae = tiny_objects(family)
    fam = families.detect_clip_family(clip)
    assert fam.name == family
    families.check_model_matches(model, fam)
    other = {"flux": "chroma", "sd3": "flux", "chroma": "flux"}[family]
    wrong = families.HOST_FAMILIES[other]
    with pytest.raises(errors.UnsupportedModelError, match=rf"MODEL is a {type(model.model).__name__} but the CLIP is {wrong.short}"):
        families.check_model_matches(model, wrong)


# ---------------------------------------------------------------------------------------------
# Training: gradient through the real T5 and DiT, rows at m*


@pytest.mark.parametrize("family", T5_FAMILIES)
def test_training_moves_every_encoders_rows_and_keeps_them_at_m_star(pack, family, embeddings):
    objects = tiny_objects(family)
    res = train(pack, objects, name=f"t5_{family}", steps=3, kappa=0.0)
    fam = res.family
    saved = safetensors.torch.load_file(str(res.saved_path))
    assert sorted(saved) == sorted(fam.file_keys)
    for sub in fam.encoders:
        enc = res.concept.encoders[sub.key]
        rows = saved[sub.key].double()
        assert torch.allclose(rows.norm(dim=-1), torch.full((rows.shape[0],), enc.m_star, dtype=torch.float64), rtol=1e-5)
        assert all(abs(r.norms[sub.key] / enc.m_star - 1) < 1e-5 for r in res.result.history)
        # a zero gradient leaves v at μ; a non-zero one turns it by exactly 0.04 rad per step
        cos = float((enc.directions * enc.mu).sum(-1).min())
        assert cos < 0.9999, f"{sub.key} did not move: no gradient reached it"
    assert all(r.loss == r.loss for r in res.result.history)


@pytest.mark.parametrize("family", T5_FAMILIES)
def test_gradient_checkpointing_trains_the_same_vectors(pack, family, embeddings):
    """Flux's and Chroma's blocks add residuals into their own inputs; recomputation in backward must
    still see them unchanged (it failed with "modified by an inplace operation" before)."""
    objects = tiny_objects(family)
    plain = train(pack, objects, name=f"gc0_{family}", steps=2, kappa=0.0, save=False)
    checkpointed = train(pack, objects, name=f"gc1_{family}", steps=2, kappa=0.0, save=False, gradient_checkpointing=True)
    for key, enc in plain.concept.encoders.items():
        assert torch.allclose(enc.directions, checkpointed.concept.encoders[key].directions, atol=1e-6), key


def test_flux_dev_trains_at_guidance_one_and_losses_use_the_flow_target(pack):
    session, denoise, tr = submodule(pack, "adapters.session"), submodule(pack, "adapters.denoise"), submodule(pack, "dti.trainer")
    encoders = submodule(pack, "adapters.text_encoder")
    model, clip, _vae = tiny_objects("flux")
    enc = encoders.text_encoder(clip)
    assert enc.family.guidance == 1.0
    with torch.inference_mode(False), torch.enable_grad():
        with session.training_models(model, enc) as patcher, enc.text_side("g") as text:
            assert not any(p.is_inference() for p in patcher.model.parameters())  # RMSNorm scales included
            side = denoise.ModelDenoiseSide(patcher, patcher.load_device, guidance=enc.family.guidance)
            text.bind_rows({"clip_l": 1, "t5xxl": 1})
            rows = {k: enc.table(k)[100:101].float() for k in ("clip_l", "t5xxl")}
            cond = text.encode(["a photo of {}"] * 2, rows)
            x0 = torch.randn(2, 16, 8, 8)
            batch = tr.Batch(x0, ["a photo of {}"] * 2, [(64, 64)] * 2, [(0, 0)] * 2, (64, 64))
            conds = side._extra_conds(batch, cond, x0, slice(None))
            assert float(conds["guidance"].cond) == 1.0
            sigma = torch.tensor([0.3, 0.7])
            noise = torch.randn_like(x0)
            x_t = side.sampling.noise_scaling(sigma, noise.clone(), x0)
            assert torch.allclose(x_t, sigma.view(-1, 1, 1, 1) * noise + (1 - sigma.view(-1, 1, 1, 1)) * x0)
            velocity = patcher.model.diffusion_model(x_t, side.sampling.timestep(sigma), cond.cross_attn, y=cond.pooled,
                                                     guidance=torch.ones(2))
            denoised = side.denoise(batch, cond, x_t, sigma)
            assert torch.allclose((x_t - denoised) / sigma.view(-1, 1, 1, 1), velocity, atol=1e-5)


@pytest.mark.parametrize("dropped", ["T5LayerSelfAttention", "T5LayerFF", "flux.DoubleStreamBlock", "flux.SingleStreamBlock",
                                     "chroma.DoubleStreamBlock", "chroma.SingleStreamBlock"])
def test_every_in_place_residual_patch_is_needed(pack, dropped, monkeypatch, embeddings):
    autograd = submodule(pack, "adapters.autograd")
    module, cls = dropped.split(".") if "." in dropped else ("t5", dropped)
    entry = next(c for c in autograd.IN_PLACE_RESIDUALS if c.__name__ == cls and module in c.__module__)
    monkeypatch.delitem(autograd.IN_PLACE_RESIDUALS, entry)
    family = "chroma" if module == "chroma" else "flux"
    with pytest.raises(RuntimeError, match="inplace operation"):
        train(pack, tiny_objects(family), name="inplace", steps=1, save=False)


# ---------------------------------------------------------------------------------------------
# Encoding: batched == ComfyUI's own encode; prompts of different lengths stay exact


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_batched_encode_equals_the_stock_encode_prompt_by_prompt(pack, family):
    encoders = submodule(pack, "adapters.text_encoder")
    tr = submodule(pack, "dti.trainer")
    _model, clip, _vae = tiny_objects(family)
    enc = encoders.text_encoder(clip)
    prompts = list(tr.OBJECT_TEMPLATES[:4])
    with torch.no_grad(), enc.text_side("c") as text:
        text.bind_rows({k: 2 for k in text.encoder_keys()})
        g = torch.Generator().manual_seed(0)
        rows = {k: torch.randn(2, enc.table(k).shape[1], generator=g) * 0.5 for k in text.encoder_keys()}
        prepared = [text.prepare(p) for p in prompts]
        assert text._batchable(prepared)
        batched = text.encode(prompts, rows)
        for i, p in enumerate(prepared):
            one = text._encode_one(p, rows)
            assert torch.allclose(batched.cross_attn[i : i + 1], one.cross_attn, atol=1e-5), prompts[i]
            assert torch.allclose(batched.pooled[i : i + 1], one.pooled, atol=1e-5), prompts[i]


def test_a_long_caption_beside_templates_is_denoised_at_its_own_length(pack):
    session, denoise, tr = submodule(pack, "adapters.session"), submodule(pack, "adapters.denoise"), submodule(pack, "dti.trainer")
    encoders = submodule(pack, "adapters.text_encoder")
    model, clip, _vae = tiny_objects("sd3")
    enc = encoders.text_encoder(clip)
    long = "a photo of {} " + "with many many small words around it " * 12  # > 77 T5 tokens: longer than the templates
    prompts = ["a photo of {}", long]
    with torch.no_grad(), session.training_models(model, enc) as patcher, enc.text_side("c") as text:
        text.bind_rows({k: 1 for k in text.encoder_keys()})
        rows = {k: enc.table(k)[200:201].float() for k in text.encoder_keys()}
        assert not text._batchable([text.prepare(p) for p in prompts])
        cond = text.encode(prompts, rows)
        assert cond.lengths is not None and cond.lengths[0] < cond.lengths[1]
        side = denoise.ModelDenoiseSide(patcher, patcher.load_device)
        x0 = torch.randn(2, 16, 8, 8)
        batch = tr.Batch(x0, prompts, [(64, 64)] * 2, [(0, 0)] * 2, (64, 64))
        sigma = torch.tensor([0.4, 0.6])
        both = side.denoise(batch, cond, x0, sigma)
        for i, p in enumerate(prompts):
            alone = text.encode([p], rows)
            one = tr.Batch(x0[i : i + 1], [p], [(64, 64)], [(0, 0)], (64, 64))
            assert torch.allclose(both[i : i + 1], side.denoise(one, alone, x0[i : i + 1], sigma[i : i + 1]), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Files: stock `embedding:name` reads what we write, bit for bit; several concepts in one prompt


def stock_encode(clip, text):
    import nodes

    with torch.inference_mode():
        return nodes.CLIPTextEncode().encode(clip, text)[0]


@pytest.mark.parametrize("family", T5_FAMILIES)
def test_saved_concept_works_with_stock_embedding_prompts(pack, family, embeddings):
    clip_text, families = submodule(pack, "adapters.clip_text"), submodule(pack, "adapters.families")
    objects = tiny_objects(family)
    res = train(pack, objects, name=f"stock_{family}", steps=2, vectors=2)
    name, clip = res.saved_path.stem, objects[1]
    fam = families.detect_clip_family(clip)
    prompts = [f"a photo of embedding:{name} on a beach", f"(embedding:{name}:1.3) in a garden, embedding:{name}, watercolor",
               "a very long prompt " + "with many many words " * 40 + f"and embedding:{name} near the end"]
    for prompt in prompts:
        stock = stock_encode(clip, prompt)
        with torch.inference_mode():
            ours = clip_text.encode_conditioning(clip, fam, name, prompt, res.concept.vectors())
        assert torch.equal(stock[0][0], ours[0][0]), prompt
        if fam.name != "chroma":
            assert torch.equal(stock[0][1]["pooled_output"], ours[0][1]["pooled_output"]), prompt
    assert not torch.equal(stock_encode(clip, prompts[0].replace(f"embedding:{name}", "a dog"))[0][0], ours[0][0])


def test_flux_and_sd3_text_encode_nodes_read_the_same_concept(pack, embeddings):
    import comfy_extras.nodes_flux
    import comfy_extras.nodes_sd3

    for family, encode in (("flux", lambda clip, t: comfy_extras.nodes_flux.CLIPTextEncodeFlux.execute(clip, t, t, 3.5)),
                           ("sd3", lambda clip, t: comfy_extras.nodes_sd3.CLIPTextEncodeSD3.execute(clip, t, t, t, "none"))):
        clip_text, families = submodule(pack, "adapters.clip_text"), submodule(pack, "adapters.families")
        objects = tiny_objects(family)
        res = train(pack, objects, name=f"node_{family}", steps=1)
        prompt = f"a photo of embedding:{res.saved_path.stem} in snow"
        with torch.inference_mode():
            stock = encode(objects[1], prompt)[0]
            ours = clip_text.encode_conditioning(objects[1], families.detect_clip_family(objects[1]), res.saved_path.stem,
                                                 prompt, res.concept.vectors())
        assert torch.equal(stock[0][0], ours[0][0]) and torch.equal(stock[0][1]["pooled_output"], ours[0][1]["pooled_output"])


@pytest.mark.parametrize("family", ["sdxl", "sd1", *T5_FAMILIES])
def test_two_concepts_in_one_prompt(pack, family, embeddings):
    """Stock `embedding:a … embedding:b`, and our encode of concept a with b left to the stock loader."""
    clip_text, encoders = submodule(pack, "adapters.clip_text"), submodule(pack, "adapters.text_encoder")
    concept_mod, formats, vocab = submodule(pack, "dti.concept"), submodule(pack, "dti.formats"), submodule(pack, "adapters.vocab")
    clip = tiny_objects(family)[1]
    enc = encoders.text_encoder(clip)
    concepts = {}
    for seed, name in enumerate(("con_a", "con_b")):
        g = torch.Generator().manual_seed(seed)
        rows = {}
        for sub in enc.family.encoders:
            s, _ = vocab.stats(enc.table(sub.key))
            d = torch.randn(1, enc.table(sub.key).shape[1], generator=g)
            rows[sub.key] = concept_mod.EncoderConcept(directions=d / d.norm(), norms=torch.tensor([s.mean]), m_star=s.mean,
                                                       encoder_id=sub.encoder_id)
        concepts[name] = concept_mod.Concept(name=name, encoders=rows, family=enc.family.name)
        formats.save_concept(concepts[name], embeddings, name, "overwrite")
    prompt = "embedding:con_a sitting next to embedding:con_b, photo"
    both = stock_encode(clip, prompt)
    with torch.inference_mode():
        ours = clip_text.encode_conditioning(clip, enc.family, "con_a", prompt, concepts["con_a"].vectors())
    assert torch.equal(both[0][0], ours[0][0])
    only_a = stock_encode(clip, "embedding:con_a sitting next to a dog, photo")
    assert not torch.equal(both[0][0], only_a[0][0])


# ---------------------------------------------------------------------------------------------
# Reading other tools' files; refusing other families' files


def test_onetrainer_t5_key_and_a_diffusers_t5_file_load_and_an_sdxl_file_is_refused(pack, embeddings):
    vocab, encoders, errors = submodule(pack, "adapters.vocab"), submodule(pack, "adapters.text_encoder"), submodule(pack, "dti.errors")
    flux = encoders.text_encoder(tiny_objects("flux")[1])
    chroma = encoders.text_encoder(tiny_objects("chroma")[1])
    safetensors.torch.save_file({"clip_l": torch.randn(2, 32), "t5": torch.randn(2, 48)}, str(embeddings / "ot.safetensors"))
    loaded = vocab.load_for(embeddings / "ot.safetensors", flux)
    assert set(loaded.vectors) == {"clip_l", "t5xxl"}
    vocab.fit(loaded.to_concept(), flux)
    safetensors.torch.save_file({"<sks>": torch.randn(3, 48)}, str(embeddings / "learned_embeds.safetensors"))
    assert set(vocab.load_for(embeddings / "learned_embeds.safetensors", chroma).vectors) == {"t5xxl"}
    safetensors.torch.save_file({"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 48)}, str(embeddings / "xl.safetensors"))
    xl = vocab.load_for(embeddings / "xl.safetensors", flux)
    with pytest.raises(errors.ConceptMismatchError, match=r"t5xxl") as info:
        vocab.fit(xl.to_concept(), flux)
    assert "48 wide" in str(info.value) and "Flux.1" in str(info.value)


def test_norm_inspector_reports_no_position_probe_for_t5(pack, embeddings):
    from comfy_harness import run_prompt

    encoders = submodule(pack, "adapters.text_encoder")
    enc = encoders.text_encoder(tiny_objects("flux")[1])
    assert enc.position_probe("t5xxl") is None and enc.position_probe("clip_l") is not None
    res = train(pack, tiny_objects("flux"), name="inspect_me", steps=1)
    prompt = {"1": {"class_type": "DTITestTinyCheckpoint", "inputs": {"ckpt_name": "tiny", "family": "flux"}},
              "2": {"class_type": "DTINormInspector", "inputs": {"clip": ["1", 1], "embedding": res.saved_path.name, "k": 5}}}
    outputs, _, _ = run_prompt(prompt)
    report = outputs["2"][0][0]
    assert "relative position biases" in report and "t5xxl" in report


# ---------------------------------------------------------------------------------------------
# Recovery of a hidden direction through the real T5


def test_dti_recovers_a_hidden_t5_direction_on_chroma(pack, embeddings):
    """Chroma's conditioning is T5 alone (unpadded), so T5's token direction is well observed.

    Measured (T5 and Chroma 16 wide, batch 2, 150 steps; seeds 0/1/2): cosine −0.14 → 0.65,
    0.29 → 0.79, 0.19 → 0.72. On Flux the same T5 row is one of 256 padded positions beside CLIP-L's
    pooled vector: CLIP-L reaches 0.93–0.94 in 300 steps, T5 only 0.01–0.49.
    """
    from recovery import run_recovery
    from tiny_comfy import build_flux_vae, build_t5_clip, build_t5_model

    with torch.inference_mode():
        objects = (build_t5_model("chroma", width_t5=16), build_t5_clip("chroma", width_t5=16), build_flux_vae())
    start, end = run_recovery(pack, objects, steps=150, seed=0, batch=2, size=64)
    print(f"cosine to hidden T5 direction: start {start}, end {end}")
    assert end["t5xxl"] > 0.5 and end["t5xxl"] - start["t5xxl"] > 0.4
