"""Training through ComfyUI's cast weights keeps no cast copy for backward, and changes no number.

Tiny SD1.5 (UNet + CLIP-L) built through ComfyUI's classes with storage dtypes set the way ComfyUI
sets them (`set_inference_dtype(storage, manual_cast)` for the UNet, `model_options["dtype"]` for
the CLIP), trained through the pack's own session, text side, denoise side and optimizer.
"""

import contextlib

import pytest
import torch
from comfy_harness import submodule
from tiny_comfy import CLIP_L, random_state_dict, sd1_unet_config

STEPS = 3


def rounded(sd, dtype):
    """The same values a `dtype` storage holds, so an fp32 reference computes on identical weights."""
    return {k: v.to(dtype).float() if torch.is_floating_point(v) else v for k, v in sd.items()}


def build_sd1(storage, compute=None, round_to=torch.bfloat16, seed=0):
    """(MODEL, CLIP) of a tiny SD1.5 whose UNet and CLIP store weights in ``storage``."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models
    import folder_paths
    from comfy.supported_models_base import ClipTarget

    with torch.inference_mode():
        config = comfy.supported_models.SD15(sd1_unet_config())
        config.set_inference_dtype(storage, compute)
        model = config.get_model({})
        model.load_model_weights(rounded(random_state_dict(model.diffusion_model, seed), round_to), "")
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                                   offload_device=comfy.model_management.unet_offload_device())
        clip = comfy.sd.CLIP(target=ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel),
                             embedding_directory=folder_paths.get_folder_paths("embeddings"),
                             model_options={"clip_l_model_config": CLIP_L, "dtype": storage})
        clip.load_sd(rounded(random_state_dict(clip.cond_stage_model, seed + 1), round_to), full_model=True)
    return patcher, clip


def weight_keys(patcher):
    """State-dict keys of the UNet's Linear/Conv weights (what LoRAs patch)."""
    import comfy.ops

    kinds = (comfy.ops.disable_weight_init.Linear, comfy.ops.disable_weight_init.Conv2d)
    return [f"diffusion_model.{n}.weight" for n, m in patcher.model.diffusion_model.named_modules() if isinstance(m, kinds)]


@contextlib.contextmanager
def saved_tensor_audit():
    """Records (shape, dtype, bytes, requires_grad, storage) of every tensor autograd saves for backward."""
    seen = []

    def pack(t):
        seen.append((tuple(t.shape), t.dtype, t.numel() * t.element_size(), t.requires_grad, t.untyped_storage().data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen


def train(pack, model, clip, mechanism=True, steps=STEPS, inside=None, precision="auto", checkpointing=False, audit=False):
    """DTI steps as the node runs them: (first step's row gradients, final rows, saved-tensor records)."""
    session, encoders, den, tr = (submodule(pack, n) for n in ("adapters.session", "adapters.text_encoder", "adapters.denoise",
                                                                "dti.trainer"))
    encoder = encoders.text_encoder(clip)
    g = torch.Generator().manual_seed(0)
    examples = [tr.LatentExample(latent=torch.randn(4, 8, 8, generator=g), original_size=(64, 64)) for _ in range(2)]
    original = session.recast_in_backward
    if not mechanism:
        session.recast_in_backward = lambda *modules: contextlib.nullcontext(0)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            with session.training_models(model, encoder, precision, checkpointing) as patcher, encoder.text_side("c") as text:
                if inside is not None:
                    inside(patcher)
                side = den.ModelDenoiseSide(patcher, patcher.load_device)
                sampler = tr.BatchSampler(examples, 2, (8, 8), 8, tr.OBJECT_TEMPLATES[:2], seed=0)
                config = submodule(pack, "dti.settings").TrainSettings(name="c", initializer="dog", steps=steps, lr=0.04,
                                                                       kappa=0.0, seed=0, batch_size=2, grad_accum=1, resolution=64)
                trainer = tr.Trainer(text, side, sampler, config)
                audit_ctx = saved_tensor_audit() if audit else contextlib.nullcontext([])
                with audit_ctx as seen:
                    trainer.train_step()
                grads = {k: p.grad.clone() for k, p in trainer.params.items()}
                for _ in range(steps - 1):
                    trainer.train_step()
                rows = {k: p.detach().clone() for k, p in trainer.params.items()}
    finally:
        session.recast_in_backward = original
    return grads, rows, seen


def assert_same(a, b):
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: max difference {float((a[k] - b[k]).abs().max())}"


def cast_copies(seen, model, clip):
    """Saved fp32 tensors shaped like a Linear/Conv weight of the UNet or CLIP, not requiring grad, and
    not a parameter itself (saving a parameter costs nothing)."""
    import comfy.ops

    kinds = tuple(getattr(comfy.ops.disable_weight_init, n) for n in ("Linear", "Conv1d", "Conv2d", "Conv3d"))
    roots = (model.model.diffusion_model, clip.cond_stage_model)
    shapes = {tuple(m.weight.shape) for root in roots for m in root.modules() if isinstance(m, kinds)}
    params = {p.untyped_storage().data_ptr() for root in roots for p in root.parameters()}
    return [s for s in seen if s[0] in shapes and s[1] == torch.float32 and not s[3] and s[4] not in params]


# ---------------------------------------------------------------------------------------------


def test_fp32_storage_trains_bit_identically_with_and_without_the_mechanism(pack, embeddings):
    model, clip = build_sd1(torch.float32)
    grads, rows, _ = train(pack, model, clip, mechanism=True)
    stock_grads, stock_rows, _ = train(pack, model, clip, mechanism=False)
    assert_same(grads, stock_grads)
    assert_same(rows, stock_rows)


def test_fp32_copies_made_by_weight_wrappers_give_bit_identical_gradients(pack, embeddings):
    """A cast that copies in fp32 (ComfyUI's weight wrappers force copy=True): the mechanism engages
    and must reproduce stock autograd bit for bit, also under gradient checkpointing."""
    model, clip = build_sd1(torch.float32)
    wrapped = model.clone()
    for key in weight_keys(wrapped):
        wrapped.add_weight_wrapper(key, lambda w: w * 0.5)
    plain_grads, plain_rows, plain_seen = train(pack, wrapped, clip, mechanism=False, audit=True)
    grads, rows, seen = train(pack, wrapped, clip, mechanism=True, audit=True)
    assert_same(grads, plain_grads)
    assert_same(rows, plain_rows)
    assert sum(s[2] for s in seen) < sum(s[2] for s in plain_seen)  # it did engage
    ckpt_grads, ckpt_rows, _ = train(pack, wrapped, clip, mechanism=True, checkpointing=True)
    assert_same(ckpt_grads, plain_grads)
    assert_same(ckpt_rows, plain_rows)


def test_bf16_storage_with_fp32_compute_matches_fp32_storage(pack, embeddings):
    """fp32 compute on the same values is exact; against unrounded fp32 weights only bf16's rounding differs."""
    same_model, same_clip = build_sd1(torch.float32)  # fp32 storage of the bf16-rounded values
    exact_model, exact_clip = build_sd1(torch.float32, round_to=torch.float32)
    bf16_model, bf16_clip = build_sd1(torch.bfloat16, torch.float32)
    layer = bf16_model.model.diffusion_model.input_blocks[0][0]
    assert layer.weight.dtype == torch.bfloat16 and layer.comfy_cast_weights  # ComfyUI's manual cast, as for --bf16-unet
    grads, rows, _ = train(pack, bf16_model, bf16_clip)
    same_grads, same_rows, _ = train(pack, same_model, same_clip)
    assert_same(grads, same_grads)
    assert_same(rows, same_rows)
    exact_grads, exact_rows, _ = train(pack, exact_model, exact_clip)
    for k in grads:
        rel = float((grads[k] - exact_grads[k]).norm() / exact_grads[k].norm())
        assert 0 < rel < 0.05, rel  # measured 0.015: bf16 keeps 8 significant bits of each weight
        rows_rel = float((rows[k] - exact_rows[k]).norm() / exact_rows[k].norm())
        assert rows_rel < 0.01, rows_rel
    stock_grads, stock_rows, _ = train(pack, bf16_model, bf16_clip, mechanism=False)
    assert_same(grads, stock_grads)
    assert_same(rows, stock_rows)


def test_no_cast_copy_is_saved_for_backward(pack, embeddings):
    """Without the mechanism every casting layer's fp32 copy is saved; with it, none is."""
    model, clip = build_sd1(torch.bfloat16, torch.float32)
    copies = {}
    for mechanism in (False, True):
        _, _, seen = train(pack, model, clip, mechanism=mechanism, steps=1, audit=True)
        copies[mechanism] = cast_copies(seen, model, clip)
    assert len(copies[False]) > 20, copies[False]  # the audit does see cast copies when they are kept
    assert copies[True] == []
    assert sum(c[2] for c in copies[False]) > 0


def test_lora_patches_on_the_lowvram_path_are_honoured_in_backward(pack, embeddings):
    """A LoRA applied in the cast path (ComfyUI's LowVramPatch after a partial unload) gives the
    gradient of the same LoRA merged into the weights by a full load."""
    import comfy.weight_adapter

    model, clip = build_sd1(torch.float32)
    lora = model.clone()
    g = torch.Generator().manual_seed(5)
    state = lora.model.state_dict()
    patches = {}
    for key in weight_keys(lora):
        w = state[key]
        up, down = torch.randn(w.shape[0], 2, generator=g) * 0.1, torch.randn(2, w[0].numel(), generator=g) * 0.1
        patches[key] = comfy.weight_adapter.LoRAAdapter(set(), (up, down, 2.0, None, None, None))
    assert len(lora.add_patches(patches, 1.0)) == len(patches)

    def unload_all(patcher):
        freed = patcher.partially_unload(patcher.offload_device, memory_to_free=patcher.model_size() * 2)
        assert freed > 0
        layer = patcher.model.diffusion_model.input_blocks[0][0]
        assert layer.comfy_cast_weights and len(layer.weight_function) == 1  # the lowvram path, patch in the cast

    merged_grads, merged_rows, _ = train(pack, lora, clip)
    lowvram_grads, lowvram_rows, seen = train(pack, lora, clip, inside=unload_all, audit=True)
    assert_same(lowvram_grads, merged_grads)
    assert_same(lowvram_rows, merged_rows)
    # and the patched copies were not kept
    _, _, stock_seen = train(pack, lora, clip, mechanism=False, steps=1, audit=True, inside=unload_all)
    assert len(cast_copies(stock_seen, lora, clip)) > 20
    assert cast_copies(seen, lora, clip) == []


def test_sampling_after_training_is_bit_identical_and_layers_are_restored(pack, embeddings):
    import comfy.model_management

    model, clip = build_sd1(torch.bfloat16, torch.float32)
    base = model.model
    x, sigma = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([3.0])
    context = torch.randn(1, 77, CLIP_L["hidden_size"], generator=torch.Generator().manual_seed(2))

    def sample():
        comfy.model_management.load_models_gpu([model])
        with torch.inference_mode():
            return base.apply_model(x, sigma, c_crossattn=context).clone()

    before = sample()
    train(pack, model, clip, steps=1)
    after = sample()
    assert torch.equal(before, after)
    for root in (base.diffusion_model, clip.cond_stage_model):
        assert not [n for n, m in root.named_modules() if "forward_comfy_cast_weights" in m.__dict__]


def test_an_error_inside_training_restores_the_layers(pack, embeddings):
    cast_backward = submodule(pack, "adapters.cast_backward")
    model, _clip = build_sd1(torch.bfloat16, torch.float32)
    root = model.model.diffusion_model
    with pytest.raises(RuntimeError, match="boom"), cast_backward.recast_in_backward(root) as covered:
        assert covered > 20
        raise RuntimeError("boom")
    assert not [n for n, m in root.named_modules() if "forward_comfy_cast_weights" in m.__dict__]
