"""DTI training through ComfyUI's real encoders and UNet (tiny random weights), run as the executor runs nodes."""

import math

import pytest
import safetensors.torch
import torch
from comfy_harness import submodule
from tiny_comfy import random_images


def vocab_m_star(clip, attr):
    table = getattr(clip.cond_stage_model, attr).transformer.get_input_embeddings().weight.double()
    norms = table.norm(dim=-1)
    return float(norms[norms > 0].mean())


def request(pack, **kw):
    base = dict(name="cat", initializer="dog", steps=6, batch_size=2, resolution=64, seed=7)
    base.update(kw)
    return submodule(pack, "dti.settings").TrainSettings(**base)


def train(pack, objects, images=None, **kw):
    session = submodule(pack, "adapters.session")
    model, clip, vae = objects
    with torch.inference_mode():  # the executor's context
        return session.train_concept(model, clip, vae, random_images(3, 64) if images is None else images, request(pack, **kw))


def fixed_batch(pack, trainer, n=2):
    tr = submodule(pack, "dti.trainer")
    exs = trainer.sampler.examples[:n]
    ch, cw = trainer.sampler.crop_size
    lat = torch.stack([e.latent[:, :ch, :cw] for e in exs])
    return tr.Batch(lat, ["a photo of a {}"] * n, [e.original_size for e in exs], [(0, 0)] * n, (ch * 8, cw * 8))


# ---------------------------------------------------------------------------------------------


def test_dti_rows_sit_at_each_encoders_m_star_and_fixed_batch_loss_falls(pack, sdxl, embeddings):
    evals = {}

    def on_step(t, record):
        if record.step == 1 or record.step == t.settings.steps:
            evals.setdefault("batch", fixed_batch(pack, t))
            evals[record.step] = t.eval_loss(evals["batch"], seed=123, repeats=8)

    session = submodule(pack, "adapters.session")
    model, clip, vae = sdxl
    with torch.inference_mode():
        res = session.train_concept(model, clip, vae, random_images(2, 64),
                                    request(pack, name="norms", steps=60, lr=0.04, kappa=0.0, captions="a photo of a {}"),
                                    on_step=on_step)
    assert evals[60] < evals[1], evals
    saved = safetensors.torch.load_file(str(res.saved_path))
    for key, attr in (("clip_l", "clip_l"), ("clip_g", "clip_g")):
        m_star = vocab_m_star(clip, attr)
        rows = saved[key].double()
        assert torch.allclose(rows.norm(dim=-1), torch.full((rows.shape[0],), m_star, dtype=torch.float64), rtol=1e-5)
        # and at every step, not only at the end
        assert all(abs(r.norms[key] / m_star - 1) < 1e-5 for r in res.result.history)
        # the direction moved away from the initializer
        init = res.concept.encoders[key].mu
        assert float((res.concept.encoders[key].directions * init).sum(-1).min()) < 0.999


def test_ti_norm_inflates_past_m_star_on_the_same_data(pack, sdxl, embeddings):
    res = train(pack, sdxl, method="ti", steps=50, lr=0.02, name="ti_cat", save=False)
    for key in ("clip_l", "clip_g"):
        m_star = res.result.concept.encoders[key]
        ratio = float(m_star.norms.max()) / vocab_m_star(sdxl[1], key)
        assert ratio > 2.0, f"{key}: TI norm only {ratio:.2f}× m*"
    rescaled = train(pack, sdxl, method="ti_rescaled", steps=5, lr=0.02, name="tir_cat", save=False)
    for key in ("clip_l", "clip_g"):
        assert torch.allclose(rescaled.concept.encoders[key].norms, torch.tensor(vocab_m_star(sdxl[1], key)).float(), rtol=1e-5)


def test_crossinit_starts_from_the_encoder_output(pack, sdxl, embeddings):
    res = train(pack, sdxl, method="crossinit", steps=3, lr=1e-6, name="xinit", save=False)
    enc = res.concept.encoders["clip_l"]
    assert enc.m_star is None and res.concept.method == "crossinit"
    assert abs(float(enc.norms[0]) - vocab_m_star(sdxl[1], "clip_l")) > 1e-3  # not a vocabulary-norm row


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_saved_concept_works_with_stock_embedding_prompts(pack, family, request_fixture_objects, embeddings):
    import nodes

    objects = request_fixture_objects(family)
    clip_text = submodule(pack, "adapters.clip_text")
    families = submodule(pack, "adapters.families")
    res = train(pack, objects, name=f"stock_{family}", steps=3, vectors=2)
    name = res.saved_path.stem
    fam = families.detect_clip_family(objects[1])
    prompts = [
        f"a photo of embedding:{name} on a beach",
        f"(embedding:{name}:1.3) in a garden, embedding:{name}, watercolor",
        "a very long prompt " + "with many many words " * 20 + f"and embedding:{name} near the end",
    ]
    clips = [objects[1]]
    layered = objects[1].clone()
    layered.clip_layer(-1)  # what CLIPSetLastLayer does
    clips.append(layered)
    for clip in clips:
        for prompt in prompts:
            with torch.inference_mode():
                (stock,) = nodes.CLIPTextEncode().encode(clip, prompt)
                ours = clip_text.encode_conditioning(clip, fam, name, prompt, res.concept.vectors())
            assert torch.equal(stock[0][0], ours[0][0]), prompt
            assert torch.equal(stock[0][1]["pooled_output"], ours[0][1]["pooled_output"]), prompt
    # and the concept is really in there: a prompt without it encodes differently
    with torch.inference_mode():
        (plain,) = nodes.CLIPTextEncode().encode(objects[1], "a photo of a dog on a beach")
    assert not torch.equal(plain[0][0], ours[0][0])


@pytest.fixture
def request_fixture_objects(sd1, sdxl):
    return {"sd1": sd1, "sdxl": sdxl}.__getitem__


def test_sd1_concept_is_written_in_the_kohya_layout(pack, sd1, embeddings):
    res = train(pack, sd1, name="sd1_cat", steps=3)
    saved = safetensors.torch.load_file(str(res.saved_path))
    assert list(saved) == ["emb_params"]
    assert abs(float(saved["emb_params"].norm(dim=-1)[0]) / vocab_m_star(sd1[1], "clip_l") - 1) < 1e-5


def test_interruption_keeps_the_last_good_vectors(pack, sdxl, embeddings, comfy_dirs):
    import comfy.model_management

    session = submodule(pack, "adapters.session")
    seen = []

    def on_step(t, record):
        seen.append(t.concept())
        if record.step == 4:
            comfy.model_management.interrupt_current_processing(True)  # the user presses Cancel

    model, clip, vae = sdxl
    with pytest.raises(comfy.model_management.InterruptProcessingException), torch.inference_mode():
        session.train_concept(model, clip, vae, random_images(3, 64), request(pack, name="stopped", steps=20), on_step=on_step)
    assert len(seen) == 4
    ck = comfy_dirs["output"] / "dti_checkpoints" / "stopped" / "interrupted_000004.safetensors"
    assert ck.is_file()
    saved = safetensors.torch.load_file(str(embeddings / "stopped.safetensors"))
    for key in ("clip_l", "clip_g"):
        assert torch.allclose(saved[key], seen[-1].encoders[key].vectors(), atol=1e-7)


def test_resume_continues_step_count_and_optimizer_state(pack, sdxl, embeddings, comfy_dirs):
    session = submodule(pack, "adapters.session")
    model, clip, vae = sdxl
    images = random_images(3, 64)
    opt_steps = {}

    def record_opt(tag):
        def cb(t, r):
            opt_steps[tag] = (t.step, t.optimizer.state[t.params["clip_l"]]["step"])
        return cb

    with torch.inference_mode():
        straight = session.train_concept(model, clip, vae, images, request(pack, name="straight", steps=6, kappa=1e-3, beta=0.9),
                                         on_step=record_opt("straight"))
        first = session.train_concept(model, clip, vae, images,
                                      request(pack, name="half", steps=6, kappa=1e-3, beta=0.9, checkpoint_every=3))
        ck = comfy_dirs["output"] / "dti_checkpoints" / "half" / "step_000003.safetensors"
        assert first.checkpoints == [ck]
        resumed = session.train_concept(model, clip, vae, images,
                                        request(pack, name="resumed", steps=6, kappa=1e-3, beta=0.9, resume=str(ck)),
                                        on_step=record_opt("resumed"))
    assert opt_steps["resumed"] == opt_steps["straight"] == (6, 6)
    assert len(resumed.result.history) == 6 and "3 this run" in resumed.summary
    for key in ("clip_l", "clip_g"):
        assert torch.allclose(resumed.concept.encoders[key].directions, straight.concept.encoders[key].directions, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_training(pack, sdxl, embeddings):
    a = train(pack, sdxl, name="gc_off", steps=3, save=False)
    b = train(pack, sdxl, name="gc_on", steps=3, save=False, gradient_checkpointing=True)
    for key in ("clip_l", "clip_g"):
        assert torch.allclose(a.concept.encoders[key].directions, b.concept.encoders[key].directions, atol=1e-5)
    diffusion = sdxl[0].model.diffusion_model
    assert not any("forward" in m.__dict__ for m in diffusion.modules())


def test_models_are_unchanged_and_usable_for_sampling_afterwards(pack, sdxl, embeddings):
    import comfy.clip_model

    import nodes

    model, clip, vae = sdxl

    def sample():
        with torch.inference_mode():
            (pos,) = nodes.CLIPTextEncode().encode(clip, "a photo of a dog")
            (neg,) = nodes.CLIPTextEncode().encode(clip, "blurry")
            latent = {"samples": torch.zeros(1, 4, 8, 8)}
            (out,) = nodes.common_ksampler(model, 5, 3, 4.0, "euler", "normal", pos, neg, latent)
            return pos[0][0].clone(), out["samples"].clone()

    cond_before, img_before = sample()
    patches_before = (dict(model.patches), dict(model.object_patches), model.model_options.copy())
    train(pack, sdxl, name="afterwards", steps=3, precision="bf16", gradient_checkpointing=True)
    cond_after, img_after = sample()
    assert torch.equal(cond_before, cond_after)
    assert torch.equal(img_before, img_after)
    assert (dict(model.patches), dict(model.object_patches)) == patches_before[:2]
    layers = [m for m in clip.cond_stage_model.modules() if isinstance(m, comfy.clip_model.CLIPLayer)]
    assert layers and not any("forward" in m.__dict__ for m in layers)
    assert clip.cond_stage_model.clip_l.layer_idx == -2  # SDXL's default layer option is back


# ---------------------------------------------------------------------------------------------
# Bad input


def test_mismatched_and_unsupported_models_are_refused(pack, sd1, sdxl, embeddings):
    families = submodule(pack, "adapters.families")
    with pytest.raises(families.UnsupportedModelError, match="MODEL is a BaseModel but the CLIP is SDXL"):
        train(pack, (sd1[0], sdxl[1], sdxl[2]))
    import comfy.sd
    import comfy.sdxl_clip
    from comfy.supported_models_base import ClipTarget

    with torch.inference_mode():
        refiner = comfy.sd.CLIP(target=ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLRefinerClipModel),
                                model_options={"clip_g_model_config": {"hidden_size": 16, "intermediate_size": 32,
                                                                       "num_attention_heads": 2, "num_hidden_layers": 3}})
    with pytest.raises(families.UnsupportedModelError, match=r"SDXLRefinerClipModel.*not a family DTI can train; supported: SDXL"):
        train(pack, (sdxl[0], refiner, sdxl[2]))
    with pytest.raises(families.UnsupportedModelError, match="no text encoder connected"):
        train(pack, (sdxl[0], None, sdxl[2]))


def test_bad_images_and_prompts_give_actionable_errors(pack, sdxl, embeddings):
    tr = submodule(pack, "dti.trainer")
    with pytest.raises(tr.TrainingError, match="image batch is empty"):
        train(pack, sdxl, images=torch.zeros(0, 64, 64, 3))
    mixed = [random_images(1, 64), random_images(1, 80)]
    with pytest.raises(tr.TrainingError, match=r"different sizes \(64×64, 80×80\).*'resize and crop'"):
        train(pack, sdxl, images=mixed, resize="keep size")
    ok = train(pack, sdxl, images=mixed, steps=1, name="mixed", save=False)  # resized per image instead
    assert ok.result.history[-1].step == 1
    # CLIP's byte-level BPE gives tokens for every non-blank string, so a blank one is the real case
    with pytest.raises(submodule(pack, "dti.errors").InputError, match="initializer is empty"):
        train(pack, sdxl, initializer=" \u2028 ")
    clip_text = submodule(pack, "adapters.clip_text")
    with pytest.raises(clip_text.MissingPlaceholderError, match="does not mention the concept"):
        train(pack, sdxl, captions="a photo of a cat")
    with pytest.raises(tr.TrainingError, match="2 caption lines for 3 images"):
        train(pack, sdxl, captions="a {}\nthe {}")
    formats = submodule(pack, "dti.formats")
    with pytest.raises(formats.EmbeddingFileError, match="contains a path"):
        train(pack, sdxl, name="a/b")
    assert list(embeddings.iterdir()) == []


def test_nan_loss_stops_with_a_clear_error_and_keeps_vectors(pack, sdxl, embeddings, monkeypatch):
    tr = submodule(pack, "dti.trainer")
    denoise = submodule(pack, "adapters.denoise").ModelDenoiseSide
    real_loss, calls = denoise.loss, []

    def loss_turning_nan(self, batch, cond, generator):  # finite for two steps, then NaN (e.g. an fp16 overflow)
        calls.append(1)
        loss = real_loss(self, batch, cond, generator)
        return loss * float("nan") if len(calls) > 2 else loss

    monkeypatch.setattr(denoise, "loss", loss_turning_nan)
    with pytest.raises(tr.TrainingError, match=r"NaN/inf for 5 steps in a row.*Saved what was learned so far: checkpoint"):
        train(pack, sdxl, name="nan_cat", steps=20, batch_size=2)
    saved = safetensors.torch.load_file(str(embeddings / "nan_cat.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_long_and_weighted_captions_train_through_the_per_prompt_path(pack, sdxl, embeddings):
    long_caption = "a photo of {} " + "standing in a field of flowers " * 12
    res = train(pack, sdxl, name="long", steps=2, captions=f"({{}}:1.2) on a table\n{long_caption}\n{{}}, sketch", save=False)
    assert all(math.isfinite(r.loss) for r in res.result.history)


def test_batched_and_per_sample_model_conditioning_agree(pack, sdxl, embeddings):
    """The one-call path for samples of equal size gives the prediction of per-sample conditioning."""
    names = ("adapters.session", "adapters.text_encoder", "adapters.denoise", "dti.trainer")
    session, encoders, den, tr = (submodule(pack, n) for n in names)
    model, clip, _vae = sdxl
    encoder = encoders.text_encoder(clip)
    with torch.inference_mode(False), torch.enable_grad():
        with session.training_models(model, encoder) as patcher, encoder.text_side("x") as text:
            text.bind_rows({"clip_l": 1, "clip_g": 1})
            rows = {"clip_l": encoder.table("clip_l")[[5]].float(), "clip_g": encoder.table("clip_g")[[5]].float()}
            batch = tr.Batch(torch.randn(3, 4, 8, 8), ["a photo of {}", "the {}", "a {} on a table"], [(96, 80)] * 3,
                             [(8, 0)] * 3, (64, 64))
            cond = text.encode(batch.prompts, rows)
            side = den.ModelDenoiseSide(patcher, patcher.load_device)
            x_t, sigma = torch.randn(3, 4, 8, 8), torch.tensor([1.0, 2.0, 5.0])
            assert side._whole_batch(batch, cond, x_t) is not None
            fast = side.denoise(batch, cond, x_t, sigma)
            side._whole_batch = lambda *args: None  # force the per-sample path
            slow = side.denoise(batch, cond, x_t, sigma)
    assert torch.allclose(fast, slow, atol=1e-5), float((fast - slow).abs().max())
