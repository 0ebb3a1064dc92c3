"""Tiny random-weight models built through ComfyUI's own classes, and a ComfyUI locator.

No weights can be downloaded in tests, and ComfyUI's layers do not initialise themselves, so every
builder loads a random state dict whose matrices are scaled by fan-in (std = 1/√fan_in), norm
scales at 1 and biases at 0. With a flat N(0, 0.02) a 32-wide model barely listens to its
conditioning and the token gradient falls below the optimizer's epsilon; random jitter on the
1-D parameters made the token direction noticeably worse conditioned.

Callers build under torch.inference_mode() to get what loader nodes hand to other nodes.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch

PACK_ROOT = Path(__file__).resolve().parents[2]

SKIP_REASON = (
    "no ComfyUI found (set COMFYUI_PATH, install the pack in ComfyUI/custom_nodes, or unpack ComfyUI into "
    "~/comfy/ComfyUI with its requirements) — integration tier skipped"
)

CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3}
CLIP_G = {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "num_hidden_layers": 3}


def find_comfyui() -> Path | None:
    """COMFYUI_PATH, else an enclosing custom_nodes/ layout, else ~/comfy/ComfyUI."""
    env = os.environ.get("COMFYUI_PATH")
    if env and (Path(env) / "comfy" / "sd.py").is_file():
        return Path(env).resolve()
    for parent in PACK_ROOT.parents:
        if parent.name == "custom_nodes" and (parent.parent / "comfy" / "sd.py").is_file():
            return parent.parent
    home = Path.home() / "comfy" / "ComfyUI"
    if (home / "comfy" / "sd.py").is_file():
        return home
    return None


def import_comfy(root: Path, cpu: bool = True) -> None:
    """Make ComfyUI importable as a library, in CPU mode unless told otherwise (must precede
    comfy.model_management, which reads the flag once)."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    # main.py imports ComfyUI's utils package before nodes.py puts comfy/ first on sys.path, where
    # comfy/utils.py would shadow it; a library user must do the same.
    import comfy.cli_args
    import utils.extra_config  # noqa: F401

    comfy.cli_args.args.cpu = cpu
    comfy.cli_args.args.disable_all_custom_nodes = False


def random_state_dict(module: torch.nn.Module, seed: int, table_std: float = 0.02) -> dict[str, torch.Tensor]:
    """Fan-in scaled random weights for every parameter and float buffer of the module."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, t in list(module.state_dict().items()):
        if not torch.is_floating_point(t):
            sd[name] = t.clone()
            continue
        shape = tuple(t.shape)
        leaf = name.rsplit(".", 1)[-1]
        if "position_embedding" in name or "token_embedding" in name or "embed_tokens" in name:
            w = torch.randn(shape, generator=g) * table_std
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            w = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        elif leaf == "weight":  # norm layers: identity scale, as a fresh network starts
            w = torch.ones(shape)
        elif leaf == "bias":
            w = torch.zeros(shape)
        else:
            w = torch.randn(shape, generator=g) * 0.02
        sd[name] = w.to(t.dtype)
    return sd


# ---------------------------------------------------------------------------------------------
# SDXL / SD1.x


def sdxl_unet_config(width_l: int = 32, width_g: int = 48, channels: int = 32) -> dict:
    return {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": channels,
        "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1],
        "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1,
        "context_dim": width_l + width_g, "adm_in_channels": width_g + 6 * 256, "num_classes": "sequential",
        "use_linear_in_transformer": True, "use_temporal_attention": False, "use_spatial_transformer": True,
        "legacy": False,
    }


def sd1_unet_config(width_l: int = 32, channels: int = 32) -> dict:
    return {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": channels,
        "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1],
        "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1,
        "context_dim": width_l, "adm_in_channels": None, "use_linear_in_transformer": False,
        "use_temporal_attention": False, "use_spatial_transformer": True, "legacy": False,
    }


def build_model(family: str = "sdxl", seed: int = 0, dtype: torch.dtype = torch.float32, **kw):
    """A ModelPatcher around a tiny SDXL or SD1.5 UNet with random fan-in weights."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    if family == "sdxl":
        config = comfy.supported_models.SDXL(sdxl_unet_config(**kw))
    elif family == "sd1":
        config = comfy.supported_models.SD15(sd1_unet_config(**kw))
    else:
        raise ValueError(family)
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    model.load_model_weights(random_state_dict(model.diffusion_model, seed), "")
    load = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=load, offload_device=comfy.model_management.unet_offload_device())


def build_clip(family: str = "sdxl", seed: int = 1, embedding_directory: str | None = None, layers: int = 3,
               width_l: int = 32, width_g: int = 48):
    """comfy.sd.CLIP with tiny CLIP-L (+ CLIP-G for SDXL) over the real CLIP tokenizer."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip
    from comfy.supported_models_base import ClipTarget

    cfg_l = {**CLIP_L, "num_hidden_layers": layers, "hidden_size": width_l, "intermediate_size": 2 * width_l}
    cfg_g = {**CLIP_G, "num_hidden_layers": layers, "hidden_size": width_g, "intermediate_size": 2 * width_g}
    if family == "sdxl":
        target = ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
        options = {"clip_l_model_config": cfg_l, "clip_g_model_config": cfg_g}
    elif family == "sd1":
        target = ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
        options = {"clip_l_model_config": cfg_l}
    else:
        raise ValueError(family)
    clip = comfy.sd.CLIP(target=target, embedding_directory=embedding_directory, model_options=options)
    clip.load_sd(random_state_dict(clip.cond_stage_model, seed), full_model=True)
    return clip


CLIP_VISION_CONFIGS = PACK_ROOT / "tests" / "fixtures" / "clip_vision"


def build_clip_vision(kind: str = "clip", seed: int = 9, projection_dim: int | None = None):
    """comfy.clip_vision.ClipVisionModel from a tiny config (fixtures/clip_vision), random fan-in weights.

    "clip": a CLIP vision tower whose image embeds are 48 wide, like the tiny CLIP-G's text embeds
    (the real pairing is ViT-bigG with CLIP-G, both 1280); ``projection_dim`` makes another width.
    "dinov2": a DINOv2 (ComfyUI's has a fixed 518 px position table).
    """
    import json
    import tempfile

    import comfy.clip_vision

    config = json.loads((CLIP_VISION_CONFIGS / {"clip": "tiny_clip_vision.json", "dinov2": "tiny_dinov2.json"}[kind]).read_text())
    if projection_dim is not None:
        config["projection_dim"] = projection_dim
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
    try:
        model = comfy.clip_vision.ClipVisionModel(f.name)
    finally:
        Path(f.name).unlink()
    model.load_sd(random_state_dict(model.model, seed))
    return model


def build_vae(seed: int = 2, latent_channels: int = 4):
    """A real 8×-downscaling TAESD VAE (2.4 M parameters) with random weights."""
    import comfy.sd
    import comfy.taesd.taesd

    shapes = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    sd = {}
    for name, t in random_state_dict(shapes, seed).items():
        if name.startswith(("taesd_encoder.", "taesd_decoder.")):
            sd[name] = t
        elif name.startswith(("encoder.", "decoder.")):
            sd["taesd_" + name] = t
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(1.0), torch.tensor(0.0)
    return comfy.sd.VAE(sd=sd)


def random_images(n: int = 4, size: int = 128, seed: int = 3) -> torch.Tensor:
    """IMAGE batch [B, H, W, C] in 0..1 with some structure (smooth blobs, not white noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 16, size // 16, generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return img.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------------------------
# Full-size shapes (for GPU benchmarks): real architectures, random weights made on the device


def full_sdxl_unet_config() -> dict:
    return {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10,
        "context_dim": 2048, "adm_in_channels": 2816, "num_classes": "sequential",
        "use_linear_in_transformer": True, "use_temporal_attention": False, "use_spatial_transformer": True,
        "legacy": False,
    }


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0, table_std: float = 0.02) -> torch.nn.Module:
    """Fill a module's floating tensors in place, on their own device (fan-in scaled, as above)."""
    g = None
    for name, t in module.state_dict(keep_vars=True).items():
        if not torch.is_floating_point(t) or t.is_meta:  # meta: a layout check, nothing to fill
            continue
        if g is None or g.device != t.device:
            g = torch.Generator(device=t.device).manual_seed(seed)
        leaf = name.rsplit(".", 1)[-1]
        if "position_embedding" in name or "token_embedding" in name or "embed_tokens" in name:
            t.normal_(0, table_std, generator=g)
        elif t.ndim >= 2:
            t.normal_(0, 1 / math.sqrt(math.prod(t.shape[1:])), generator=g)
        elif leaf in ("weight", "scale"):  # norm scales (Flux's RMSNorm calls its own `scale`)
            t.fill_(1.0)
        else:
            t.zero_()
    return module


def build_full_sdxl(device: str = "cuda", dtype: torch.dtype = torch.float16, text_device: str | None = None):
    """(ModelPatcher, CLIP) with SDXL's real shapes (UNet 2.6 B, CLIP-L 12 + CLIP-G 32 layers), random weights.
    ``text_device``: where the text encoders live and run (default: ``device``)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models
    from comfy.supported_models_base import ClipTarget

    config = comfy.supported_models.SDXL(full_sdxl_unet_config())
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    model.diffusion_model.to(device=device, dtype=dtype)
    randomize_(model.diffusion_model)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device(device),
                                               offload_device=comfy.model_management.unet_offload_device())
    text = torch.device(text_device or device)
    options = {"initial_device": text} if text_device is None else {"initial_device": text, "load_device": text}
    clip = comfy.sd.CLIP(target=ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel),
                         model_options=options)
    randomize_(clip.cond_stage_model, seed=1)
    return patcher, clip


# ---------------------------------------------------------------------------------------------
# Gemma-2 families: Lumina 2 (native) — SentencePiece tokenizer, Gemma CLIP, NextDiT, 16-ch VAE

SP_WORDS = (
    "a an the photo rendering cropped clean dirty dark my cool close-up bright good one rendition nice small weird "
    "large of in on at with and painting picture style dog cat teapot car house tree beach forest city street sunset "
    "snow garden table sketch watercolor portrait you are assistant designed to generate superior images high-quality "
    "degree image-text alignment based textual prompts or user prompt start given enhanced that provides detailed "
    "visual descriptions suitable for generation evaluate level detail if is simple focus adding specifics about colors "
    "shapes sizes textures spatial relationships create vivid concrete scenes already refine enhance existing details "
    "slightly without overcomplicating here are examples how transform sleeping fluffy white curled up round shape "
    "peacefully warm sunny windowsill surrounded by pots blooming red flowers busy scene dusk featuring glowing lamps "
    "diverse crowd people colorful clothing double-decker bus passing towering glass skyscrapers please only "
    "description below avoid including any additional commentary evaluations sks"
).split()


def sentencepiece_model(vocab_size: int = 1000, seed: int = 0) -> bytes:
    """A small BPE SentencePiece model shaped like Gemma's: pad 0, eos 1, bos 2, unk 3, no dummy prefix."""
    import io
    import random

    import sentencepiece

    rng = random.Random(seed)
    lines = [" ".join(rng.choice(SP_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(3000)]
    lines += [" ".join(SP_WORDS[i : i + 8]) for i in range(0, len(SP_WORDS), 4)]
    # Bare words too, so that a word alone (an initializer) is one piece, as in Gemma's real vocabulary.
    lines += [w for w in SP_WORDS for _ in range(30)]
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        add_dummy_prefix=False, byte_fallback=True, character_coverage=1.0,
        num_threads=1, user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], minloglevel=2,
    )
    return buf.getvalue()


GEMMA_TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
              "num_key_value_heads": 1, "max_position_embeddings": 1024}


def build_gemma_clip(seed: int = 4, vocab_size: int = 1000, width: int = 32):
    """comfy.sd.CLIP with ComfyUI's own Gemma-2 text encoder (Lumina 2's), tiny, random weights."""
    import comfy.sd
    import comfy.text_encoders.lumina2
    from comfy.supported_models_base import ClipTarget

    config = {**GEMMA_TINY, "vocab_size": vocab_size, "hidden_size": width, "intermediate_size": 2 * width}
    clip = comfy.sd.CLIP(
        target=ClipTarget(comfy.text_encoders.lumina2.LuminaTokenizer, comfy.text_encoders.lumina2.te()),
        tokenizer_data={"spiece_model": sentencepiece_model(vocab_size)},
        model_options={"gemma2_2b_model_config": config},
    )
    clip.load_sd(random_state_dict(clip.cond_stage_model, seed), full_model=True)
    return clip


def build_lumina2_model(seed: int = 5, cap_width: int = 32, dim: int = 64):
    """A ModelPatcher around a tiny NextDiT (Lumina 2) with random fan-in weights."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    unet = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": dim, "n_layers": 2, "n_refiner_layers": 1,
            "n_heads": 2, "n_kv_heads": 2, "multiple_of": 16, "ffn_dim_multiplier": None, "norm_eps": 1e-5, "qk_norm": True,
            "cap_feat_dim": cap_width, "axes_dims": [8, 12, 12], "axes_lens": [1024, 128, 128]}
    config = comfy.supported_models.Lumina2(unet)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    model.load_model_weights(random_state_dict(model.diffusion_model, seed), "")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def build_flux_vae(seed: int = 6):
    """A 16-channel TAESD (the Flux/Lumina 2 latent space), random weights."""
    return build_vae(seed=seed, latent_channels=16)


# ---------------------------------------------------------------------------------------------
# SANA through ComfyUI_ExtraModels (when that pack sits in ComfyUI/custom_nodes)

SANA_TINY_CONFIG = "DTITest_SanaTiny"


def extramodels_path(comfy_root: Path | None = None) -> Path | None:
    root = comfy_root or find_comfyui()
    if root is None:
        return None
    path = root / "custom_nodes" / "ComfyUI_ExtraModels"
    return path if (path / "Sana" / "nodes.py").is_file() else None


def load_extramodels(path: Path):
    """Import the pack through ComfyUI's own loader (once); returns its module."""
    import asyncio

    import nodes

    name = str(path).replace(".", "_x_")
    if name not in sys.modules and not asyncio.run(nodes.load_custom_node(str(path))):
        raise RuntimeError(f"ComfyUI could not import {path}")
    return sys.modules[name]


def build_sana(pack_module, checkpoint_dir: Path, cap_width: int = 32, seed: int = 7):
    """A tiny SANA (depth 1, hidden 32, 2 heads) registered in the pack's config table and loaded by
    its own SanaCheckpointLoader, without its global CFG patch (it would leak into other tests)."""
    import importlib

    import folder_paths

    conf = importlib.import_module(pack_module.__name__ + ".Sana.conf")
    sana_ms = importlib.import_module(pack_module.__name__ + ".Sana.models.sana_multi_scale")
    sana_nodes = importlib.import_module(pack_module.__name__ + ".Sana.nodes")
    unet = {"in_channels": 32, "depth": 1, "hidden_size": 32, "patch_size": 1, "num_heads": 2, "linear_head_dim": 16,
            "model_max_length": 300, "y_norm": True, "attn_type": "linear", "ffn_type": "glumbconv", "mlp_ratio": 2.5,
            "mlp_acts": ["silu", "silu", None], "use_pe": False, "pred_sigma": False, "learn_sigma": False,
            "fp32_attention": True, "caption_channels": cap_width}
    conf.sana_conf[SANA_TINY_CONFIG] = {"target": "SanaMS", "unet_config": unet, "sampling_settings": {"shift": 3.0}}
    import safetensors.torch

    path = checkpoint_dir / "tiny_sana.safetensors"
    if not path.exists():
        safetensors.torch.save_file(random_state_dict(sana_ms.SanaMS(**dict(unet)), seed), str(path))
    folder_paths.add_model_folder_path("checkpoints", str(checkpoint_dir))
    (model,) = sana_nodes.SanaCheckpointLoader().load_checkpoint(path.name, SANA_TINY_CONFIG, "FP32", enable_cfg_passthrough=False)
    return model


def build_hf_gemma(seed: int = 8, width: int = 32, vocab_size: int = 1000) -> dict:
    """What ExtraModels' GemmaLoader returns, tiny: an HF GemmaTokenizer over a test SentencePiece
    model (BOS added, right padding) and a random HF Gemma2 decoder."""
    import tempfile

    from transformers import Gemma2Config, Gemma2Model, GemmaTokenizer

    folder = Path(tempfile.mkdtemp(prefix="dti-gemma-tok-"))
    (folder / "tokenizer.model").write_bytes(sentencepiece_model(vocab_size))
    tokenizer = GemmaTokenizer.from_pretrained(str(folder), add_bos_token=True)
    tokenizer.padding_side = "right"
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                          pad_token_id=0, bos_token_id=2, eos_token_id=1, attn_implementation="eager")
    model = Gemma2Model(config).eval()
    model.load_state_dict(random_state_dict(model, seed), strict=False)
    model.requires_grad_(False)
    return {"tokenizer": tokenizer, "text_encoder": model, "text_encoder_model": None}


def build_full_sana(device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> tuple:
    """(ModelPatcher, GEMMA dict) with SANA 1.5 1.6B's real shapes (from the pack's own config table)
    and a Gemma-2-2B-shaped HF decoder, random weights made on the device. Needs ComfyUI_ExtraModels."""
    import importlib

    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    from transformers import Gemma2Config, Gemma2Model

    pack = load_extramodels(extramodels_path())
    conf = importlib.import_module(pack.__name__ + ".Sana.conf")
    loader = importlib.import_module(pack.__name__ + ".Sana.loader")
    sana_ms = importlib.import_module(pack.__name__ + ".Sana.models.sana_multi_scale")
    model_conf = loader.EXM_Sana(dict(conf.sana_conf["SanaMS1.5_1600M_P1_D20"]))
    model = loader.EXM_Sana_Model(model_conf, model_type=comfy.model_base.ModelType.FLOW, device=torch.device(device))
    unet = {k: v for k, v in model_conf.unet_config.items() if k != "disable_unet_model_creation"}
    with torch.device(device):
        model.diffusion_model = sana_ms.SanaMS(**unet)
    model.diffusion_model.to(dtype).eval()
    model.diffusion_model.dtype = dtype
    randomize_(model.diffusion_model)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device(device),
                                               offload_device=comfy.model_management.unet_offload_device())
    gemma = build_hf_gemma()  # the small test tokenizer; its ids are valid in the full vocabulary
    config = Gemma2Config(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                          num_attention_heads=8, num_key_value_heads=4, head_dim=256, pad_token_id=0, bos_token_id=2,
                          eos_token_id=1, attn_implementation="eager")  # Gemma-2 has no SDPA path in transformers 5
    with torch.device(device):
        text = Gemma2Model(config).to(dtype).eval()
    randomize_(text, seed=1)
    text.requires_grad_(False)
    gemma["text_encoder"] = text
    return patcher, gemma


# ---------------------------------------------------------------------------------------------
# T5 families: Flux.1 (CLIP-L + T5), SD3.5 (CLIP-L + CLIP-G + T5), Chroma (T5) — ComfyUI's own
# classes and its shipped T5 tokenizer (32100 ids over a 32128-row table, as in T5 v1.1 XXL).
#
# Stock `embedding:` prompts accept a T5 of any width (ComfyUI checks a row's width against the
# loaded table, not against 4096), and Flux and Chroma read T5's width from their context_in_dim,
# so their tiny T5 is narrow. SD3ClipModel pads the CLIP features to exactly 4096 before stacking
# T5's sequence under them: an SD3 T5 must be 4096 wide (its table alone 32128 × 4096, fp16 here).

T5_TINY = {"d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2}
T5_REACHABLE = 32100  # len(ComfyUI's T5 tokenizer)


def t5_config(width: int) -> dict:
    return {**T5_TINY, "d_model": width}


def _t5_random_state_dict(clip_model, seed: int) -> dict[str, torch.Tensor]:
    """Random weights; T5's 28 rows past the tokenizer's ids get 5× larger norms, standing in for the
    never-trained rows of a real T5 v1.1 table (so that excluding them from m* is visible)."""
    sd = random_state_dict(clip_model, seed)
    key = "t5xxl.transformer.shared.weight"
    table = sd[key].float()
    table[T5_REACHABLE:] *= 5.0
    sd[key] = table.to(sd[key].dtype)
    return sd


def build_t5_clip(family: str, seed: int = 11, embedding_directory: str | None = None, width_l: int = 32,
                  width_g: int = 48, width_t5: int | None = None, layers: int = 3):
    """comfy.sd.CLIP of a T5 family ("flux", "sd3", "chroma") with tiny encoders, random weights."""
    import comfy.sd
    import comfy.text_encoders.flux
    import comfy.text_encoders.pixart_t5
    import comfy.text_encoders.sd3_clip
    from comfy.supported_models_base import ClipTarget

    cfg_l = {**CLIP_L, "num_hidden_layers": layers, "hidden_size": width_l, "intermediate_size": 2 * width_l}
    cfg_g = {**CLIP_G, "num_hidden_layers": layers, "hidden_size": width_g, "intermediate_size": 2 * width_g}
    if family == "flux":
        target = ClipTarget(comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.flux_clip())
        options = {"clip_l_model_config": cfg_l, "t5xxl_model_config": t5_config(width_t5 or 48)}
    elif family == "sd3":
        target = ClipTarget(comfy.text_encoders.sd3_clip.SD3Tokenizer, comfy.text_encoders.sd3_clip.sd3_clip())
        options = {"clip_l_model_config": cfg_l, "clip_g_model_config": cfg_g, "t5xxl_model_config": t5_config(width_t5 or 4096)}
    elif family == "chroma":
        target = ClipTarget(comfy.text_encoders.pixart_t5.PixArtTokenizer, comfy.text_encoders.pixart_t5.pixart_te())
        options = {"t5xxl_model_config": t5_config(width_t5 or 48)}
    else:
        raise ValueError(family)
    clip = comfy.sd.CLIP(target=target, embedding_directory=embedding_directory, model_options=options)
    clip.load_sd(_t5_random_state_dict(clip.cond_stage_model, seed), full_model=True)
    return clip


def flux_unet_config(width_l: int = 32, width_t5: int = 48, hidden: int = 64, guidance: bool = True) -> dict:
    return {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": width_l, "context_in_dim": width_t5,
            "hidden_size": hidden, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
            "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": guidance}


def sd3_unet_config(width_l: int = 32, width_g: int = 48, width_t5: int = 4096) -> dict:
    return {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 1, "input_size": None,
            "adm_in_channels": width_l + width_g, "pos_embed_max_size": 16, "num_patches": 256,
            "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [],
            "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": width_t5, "out_features": 64}}}


def chroma_unet_config(width_t5: int = 48, hidden: int = 64) -> dict:
    return {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": width_t5, "hidden_size": hidden,
            "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000,
            "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": hidden, "hidden_dim": 64, "n_layers": 1}


def build_t5_model(family: str, seed: int = 12, dtype: torch.dtype = torch.float32, **kw):
    """A ModelPatcher around a tiny Flux.1 dev ("flux"), Flux.1 schnell ("flux_schnell"), SD3 or Chroma DiT."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    if family == "flux":
        config = comfy.supported_models.Flux(flux_unet_config(**kw))
    elif family == "flux_schnell":
        config = comfy.supported_models.FluxSchnell(flux_unet_config(guidance=False, **kw))
    elif family == "sd3":
        config = comfy.supported_models.SD3(sd3_unet_config(**kw))
    elif family == "chroma":
        config = comfy.supported_models.Chroma(chroma_unet_config(**kw))
    else:
        raise ValueError(family)
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    model.load_model_weights(random_state_dict(model.diffusion_model, seed), "")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


# ---------------------------------------------------------------------------------------------
# Full-size T5 families (for GPU benchmarks): Flux.1 dev (12 B DiT + CLIP-L + T5-XXL 4.7 B) and
# SD3.5 Large (8 B MMDiT + CLIP-L + CLIP-G + T5-XXL), real shapes, random weights made on the device.
# device="meta" builds the layout only (no memory), to check it against ComfyUI's model detection.

# What ComfyUI's detect_unet_config reads from a Flux.1 dev checkpoint.
FLUX_DEV_UNET = {"image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16, "vec_in_dim": 768,
                 "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19,
                 "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
                 "guidance_embed": True}
SD35_LARGE_DEPTH = 38  # MMDiT width = 64 × depth (2432), 38 heads
CLIP_ZERO_ROWS = (49400, 49401, 49402)  # a few rows with no vector, so "mean of the non-zero rows" is exercised
T5_ZERO_ROWS = (32097, 32098, 32099)


def full_sd3_unet_config(depth: int = SD35_LARGE_DEPTH) -> dict:
    """What ComfyUI's detect_unet_config reads from an SD3.5 Large checkpoint (``depth`` blocks)."""
    return {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": depth, "input_size": None,
            "adm_in_channels": 2048, "num_patches": 36864, "pos_embed_max_size": 192, "qk_norm": "rms",
            "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [],
            "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64 * depth}}}


@torch.no_grad()
def fill_token_rows_(table: torch.Tensor, seed: int, zero_rows: tuple[int, ...], reachable: int | None = None) -> None:
    """Token rows of norm ≈ 0.4 (as in the released CLIP-L; see fullsize.py), a few all-zero rows, and
    rows past ``reachable`` (ids the tokenizer never produces) 5× larger, as never-trained T5 rows."""
    if table.is_meta:
        return
    from fullsize import TOKEN_ROW_NORM

    g = torch.Generator(device=table.device).manual_seed(seed)
    table.normal_(0, TOKEN_ROW_NORM / math.sqrt(table.shape[-1]), generator=g)
    if reachable is not None:
        table[reachable:] *= 5.0
    table[list(zero_rows)] = 0


def _full_dit(config, device: str, dtype: torch.dtype):
    import comfy.model_management
    import comfy.model_patcher

    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=torch.device(device))  # layers made in ``dtype`` where they live
    model.diffusion_model.to(device=device, dtype=dtype)  # the few plain parameters (Flux's norm scales)
    randomize_(model.diffusion_model)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device(device),
                                            offload_device=comfy.model_management.unet_offload_device())


def _full_t5_clip(target, device: str, text_device: str | None, t5_layers: int, seed: int):
    """comfy.sd.CLIP of ``target`` with full-size encoders (T5-XXL's own config unless ``t5_layers`` < 24)."""
    import comfy.sd

    text = torch.device(text_device or device)
    options = {"initial_device": text} if text_device is None else {"initial_device": text, "load_device": text}
    if t5_layers != 24:
        options["t5xxl_model_config"] = {"num_layers": t5_layers}
    clip = comfy.sd.CLIP(target=target, model_options=options)
    model = clip.cond_stage_model
    randomize_(model, seed=seed)
    for i, key in enumerate(("clip_l", "clip_g")):
        enc = getattr(model, key, None)
        if enc is not None:
            fill_token_rows_(enc.transformer.get_input_embeddings().weight, seed + 1 + i, CLIP_ZERO_ROWS)
    fill_token_rows_(model.t5xxl.transformer.get_input_embeddings().weight, seed + 3, T5_ZERO_ROWS, T5_REACHABLE)
    return clip


def build_full_flux(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, text_device: str | None = None,
                    depth: int = 19, depth_single_blocks: int = 38, t5_layers: int = 24):
    """(ModelPatcher, CLIP) with Flux.1 dev's real shapes (DiT 11.9 B: width 3072, 19 double + 38 single
    blocks, guidance embedder; CLIP-L 123 M; T5-XXL 4.76 B: 24 layers, d_model 4096, d_ff 10240, vocabulary
    32128) and ComfyUI's shipped T5 tokenizer, random weights made on ``device`` (no weight crosses the bus).
    Fewer blocks/layers only to check the layout on a small machine."""
    import comfy.supported_models
    import comfy.text_encoders.flux
    from comfy.supported_models_base import ClipTarget

    unet = {**FLUX_DEV_UNET, "depth": depth, "depth_single_blocks": depth_single_blocks}
    patcher = _full_dit(comfy.supported_models.Flux(unet), device, dtype)
    target = ClipTarget(comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.flux_clip())
    return patcher, _full_t5_clip(target, device, text_device, t5_layers, seed=1)


def build_full_sd3(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, text_device: str | None = None,
                   depth: int = SD35_LARGE_DEPTH, t5_layers: int = 24):
    """(ModelPatcher, CLIP) with SD3.5 Large's real shapes (MMDiT 8.1 B: 38 blocks of width 2432, RMS q/k
    norms; CLIP-L + CLIP-G 0.8 B; T5-XXL 4.76 B), random weights made on ``device``."""
    import comfy.supported_models
    import comfy.text_encoders.sd3_clip
    from comfy.supported_models_base import ClipTarget

    patcher = _full_dit(comfy.supported_models.SD3(full_sd3_unet_config(depth)), device, dtype)
    target = ClipTarget(comfy.text_encoders.sd3_clip.SD3Tokenizer, comfy.text_encoders.sd3_clip.sd3_clip())
    return patcher, _full_t5_clip(target, device, text_device, t5_layers, seed=1)
