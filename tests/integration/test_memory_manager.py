"""Training through ComfyUI's memory manager: what it is asked for, partial and no-VRAM loads, LoRA
patches, fp8 and fp16 storage — the vectors match a full load bit for bit, and the host is left as it was.

How partial loading is forced on a CPU-only machine is explained in tests/support/memory_manager.py.
"""

import pytest
import torch
from comfy_harness import submodule
from memory_manager import cast_layers, castable_layers, loaded_models, stock_sample, vram_device
from tiny_comfy import build_clip, build_vae, random_images, random_state_dict, sd1_unet_config

STEPS = 3


def train(pack, objects, images, **kw):
    session = submodule(pack, "adapters.session")
    settings = dict(name="mm", initializer="dog", steps=STEPS, batch_size=2, resolution=64, seed=3, save=False)
    settings.update(kw)
    model, clip, vae = objects
    with torch.inference_mode():
        return session.train_concept(model, clip, vae, images, submodule(pack, "dti.settings").TrainSettings(**settings))


def vectors(res) -> dict[str, torch.Tensor]:
    return {k: e.vectors() for k, e in res.concept.encoders.items()}


def assert_same_vectors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: max difference {float((a[k] - b[k]).abs().max())}"


# ---------------------------------------------------------------------------------------------
# Models as users load them: LoRA-patched, fp8 (plain and scaled), fp8 text encoder, fp16


def _unet(storage=torch.float32, compute=None, scaled=False, seed=0):
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(sd1_unet_config())
    if scaled:  # what a checkpoint carrying a "scaled_fp8" marker gets: comfy.ops.scaled_fp8_ops
        config.scaled_fp8 = torch.float8_e4m3fn
    config.set_inference_dtype(storage, compute)
    model = config.get_model({})
    sd = random_state_dict(model.diffusion_model, seed)
    if scaled:
        for key in [k for k in sd if k.endswith(".scale_weight")]:
            prefix = key[: -len("scale_weight")]
            w = random_state_dict(model.diffusion_model, seed)[prefix + "weight"].float()
            scale = w.abs().max() / 448  # the largest e4m3 value, as quantising tools choose it
            sd[key], sd[prefix + "weight"] = scale.reshape(()), (w / scale).to(torch.float8_e4m3fn)
    model.load_model_weights(sd, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def _lora(model, rank=2, seed=5):
    """A clone with random low-rank deltas on every linear/conv weight, added as LoraLoader adds patches."""
    g = torch.Generator().manual_seed(seed)
    patches = {}
    for key, w in model.model_state_dict().items():
        if key.endswith(".weight") and w.ndim >= 2 and "diffusion_model" in key:
            out, fan_in = w.shape[0], w[0].numel()
            up, down = torch.randn(out, rank, generator=g) * 0.05, torch.randn(rank, fan_in, generator=g) / fan_in**0.5
            patches[key] = ((up @ down).reshape(w.shape),)
    lora = model.clone()
    assert len(lora.add_patches(patches, 1.0)) == len(patches)
    return lora


def _fp8_clip():
    import comfy.sd
    import comfy.sd1_clip
    from comfy.supported_models_base import ClipTarget
    from tiny_comfy import CLIP_L

    clip = comfy.sd.CLIP(target=ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel),
                         model_options={"clip_l_model_config": dict(CLIP_L), "dtype": torch.float8_e4m3fn})
    clip.load_sd(random_state_dict(clip.cond_stage_model, 1), full_model=True)
    return clip


VARIANTS = {
    # name: (MODEL, CLIP builder), precision
    "fp32": (lambda: (_unet(), build_clip("sd1")), "auto"),
    "lora": (lambda: (_lora(_unet()), build_clip("sd1")), "auto"),
    "fp8 unet, fp32 compute": (lambda: (_unet(torch.float8_e4m3fn, torch.float32), build_clip("sd1")), "auto"),
    "fp8 unet, bf16 compute": (lambda: (_unet(torch.float8_e4m3fn, torch.float32), build_clip("sd1")), "bf16"),
    "scaled fp8 unet": (lambda: (_unet(torch.float8_e4m3fn, torch.float32, scaled=True), build_clip("sd1")), "auto"),
    "fp8 text encoder": (lambda: (_unet(), _fp8_clip()), "auto"),
    "fp16 unet, auto": (lambda: (_unet(torch.float16), build_clip("sd1")), "auto"),
}


@pytest.fixture(scope="module")
def images():
    return random_images(2, 64)


@pytest.fixture(scope="module")
def vae(comfy_dirs):
    with torch.inference_mode():
        return build_vae()


def _objects(name, vae):
    build, precision = VARIANTS[name]
    with torch.inference_mode():
        model, clip = build()
    return (model, clip, vae), precision


# ---------------------------------------------------------------------------------------------


def test_the_step_memory_reaches_comfyui_and_sizes_its_weight_budget(pack, vae, images, embeddings):
    import comfy.model_management as mm

    models, session = submodule(pack, "adapters.models"), submodule(pack, "adapters.session")
    objects, _ = _objects("fp32", vae)
    with vram_device(objects[0], mm.VRAMState.NORMAL_VRAM, free=64 * 2**30) as log:
        res = train(pack, objects, images)
    (call,) = log.calls
    expected = models.training_memory_estimate("sd1", 64, 2, False, torch.float32, 8)
    assert call["memory_required"] == call["minimum_memory_required"] == expected
    assert not call["force_full_load"]
    assert f"{expected / 2**20:.0f} MB requested" in res.summary and "model fully loaded" in res.summary

    # ComfyUI keeps free − (required + its reserve) for weights: 4× the pixels, less room for weights.
    encoder = submodule(pack, "adapters.text_encoder").text_encoder(objects[1])
    budgets = {}
    for resolution in (512, 1024):
        with vram_device(objects[0], mm.VRAMState.NORMAL_VRAM, free=64 * 2**30) as log, torch.inference_mode(False):
            with session.training_models(objects[0], encoder, "auto", False, (resolution, 4, 8)) as patcher:
                (budget,) = [b for p, b in log.budgets if p is patcher]
        budgets[resolution] = budget, log.calls[0]["memory_required"]
    (b512, r512), (b1024, r1024) = budgets[512], budgets[1024]
    assert r1024 > r512 > 2 * 2**30  # above ComfyUI's own floor for inference memory
    assert b512 - b1024 == pytest.approx(r1024 - r512, abs=1)


def test_estimate_scales_with_pixels_batch_precision_and_checkpointing(pack):
    est = submodule(pack, "adapters.models").training_memory_estimate
    base = est("sdxl", 1024, 1, False, torch.bfloat16)
    assert 6 * 2**30 < base < 12 * 2**30  # SDXL at 1024² keeps ~6.4 GB of activations per sample in bf16
    assert est("sdxl", 1024, 1, True, torch.bfloat16) < base / 4
    assert est("sdxl", 1024, 2, False, torch.bfloat16) == pytest.approx(2 * base, rel=1e-6)
    assert est("sdxl", 1024, 1, False, torch.float32) > 1.9 * base
    assert est("sd1", 512, 1, False, torch.float16) < est("sdxl", 512, 1, False, torch.float16)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_no_vram_training_matches_a_full_load_and_leaves_comfyui_as_it_was(pack, vae, images, embeddings, name):
    import comfy.model_management as mm

    objects, precision = _objects(name, vae)
    model, clip, _ = objects
    before = stock_sample(model, clip)
    state = loaded_models()
    full = train(pack, objects, images, precision=precision)
    with vram_device(model, mm.VRAMState.NO_VRAM) as log:
        low = train(pack, objects, images, precision=precision)
    assert_same_vectors(vectors(full), vectors(low))
    trained = log.calls[0]["models"][0]
    # ComfyUI left every castable layer of the model off the device and casts it per forward
    (budget,) = [b for p, b in log.budgets if p is trained]
    assert budget == 0.1
    n = castable_layers(trained)
    assert n > 0 and "model partially loaded (0 of" in low.summary and f"{n} layers cast" in low.summary
    if name == "lora":
        assert trained.lowvram_patch_counter() > 0  # patches applied per forward (LowVramPatch), not merged
    after = stock_sample(model, clip)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert loaded_models() == state


@pytest.mark.parametrize("name", ["fp32", "lora", "scaled fp8 unet"])
def test_partial_load_matches_a_full_load(pack, vae, images, embeddings, name):
    objects, precision = _objects(name, vae)
    full = train(pack, objects, images, precision=precision)
    with vram_device(objects[0], free_after_load=0.5) as log:
        part = train(pack, objects, images, precision=precision)
    assert_same_vectors(vectors(full), vectors(part))
    trained = log.calls[0]["models"][0]
    n = cast_layers(trained)
    assert 0 < n < castable_layers(trained)  # ComfyUI freed about half: some layers resident, the others cast
    assert "model partially loaded" in part.summary and f"{n} layers cast" in part.summary


def test_interrupt_under_no_vram_leaves_comfyui_as_it_was(pack, vae, images, embeddings):
    import comfy.model_management as mm

    session = submodule(pack, "adapters.session")
    objects, _ = _objects("lora", vae)
    model, clip, _ = objects
    before = stock_sample(model, clip)
    state = loaded_models()

    def on_step(t, record):
        if record.step == 2:
            mm.interrupt_current_processing(True)

    settings = submodule(pack, "dti.settings").TrainSettings(name="mm_stop", initializer="dog", steps=10, batch_size=2,
                                                             resolution=64, seed=3, save=False)
    with vram_device(model, mm.VRAMState.NO_VRAM), pytest.raises(mm.InterruptProcessingException), torch.inference_mode():
        session.train_concept(*objects, images, settings, on_step=on_step)
    mm.interrupt_current_processing(False)
    after = stock_sample(model, clip)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert loaded_models() == state
    assert not any("forward" in m.__dict__ for m in model.model.modules())


def test_gradient_checkpointing_keeps_far_fewer_activations(pack):
    """ComfyUI's UNet calls the layers inside each block itself, so checkpointing must wrap those layers."""
    autograd = submodule(pack, "adapters.autograd")
    with torch.inference_mode():
        patcher = _unet()
    model = patcher.model
    autograd.make_autograd_ready(model)

    def kept_bytes(checkpointing: bool) -> int:
        kept = []

        def pack_hook(t):
            kept.append(t.numel() * t.element_size())
            return t

        x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        ctx = torch.randn(1, 77, 32, requires_grad=True)
        with autograd.gradient_checkpointing(model.diffusion_model, checkpointing) as wrapped:
            assert (wrapped > 0) == checkpointing
            with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
                out = model.apply_model(x, torch.tensor([5.0]), c_crossattn=ctx)
            out.float().square().mean().backward()
        return sum(kept)

    plain, checkpointed = kept_bytes(False), kept_bytes(True)
    assert checkpointed < plain / 3, (plain, checkpointed)
