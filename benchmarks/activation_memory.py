"""Activation memory of a UNet training step per latent pixel, measured on the meta device.

    python benchmarks/activation_memory.py     # SD1.5 and SDXL, full-size shapes, no weights allocated

Counts the bytes autograd keeps for backward (saved-tensor hooks) in one forward of ComfyUI's own
UNet built on the meta device, so no memory or compute is spent. Weights (and views of them) are not
counted; attention probabilities are not either, because GPUs run flash / memory-efficient attention,
which keeps only q, k, v and the output. Per sample = the difference between batch 2 and batch 1.
With gradient checkpointing (each top-level block recomputed in backward, as adapters/autograd.py
does): the block inputs are kept, plus the largest single block while it is recomputed.
The printed figures are the constants in dti/memory.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import tiny_comfy  # noqa: E402
from fullsize import SD15_UNET  # noqa: E402  (the one copy of the full-size SD1.5 config)
from train_step import load_pack  # noqa: E402


def _is_attention_probs(t: torch.Tensor, tokens: int) -> bool:
    return t.ndim >= 3 and (t.shape[-1] == t.shape[-2] or (t.shape[-1] == tokens and t.shape[-2] != tokens))


def saved_bytes(diffusion_model, blocks, latent: int, batch: int, context_dim: int, adm: int | None, tokens: int = 77):
    """(bytes kept without checkpointing, bytes kept with checkpointing of ``blocks``) for one forward."""
    dtype = torch.float16
    params = {id(p) for p in diffusion_model.parameters()}
    per_block: dict[int, int] = {}
    inputs: dict[int, int] = {}
    current = [-1]
    hooks = []
    for i, block in enumerate(blocks):
        def pre(_m, args, kwargs, i=i):
            current[0] = i
            for a in [*args, *kwargs.values()]:
                if torch.is_tensor(a):
                    inputs[id(a)] = a.numel() * a.element_size()
        hooks.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(block.register_forward_hook(lambda *_: current.__setitem__(0, -1)))
    seen: dict[int, tuple[int, int]] = {}

    def pack(t):
        if id(t) not in params and not _is_attention_probs(t, tokens):
            seen[id(t)] = (current[0], t.numel() * t.element_size())
        return t

    x = torch.randn(batch, 4, latent, latent, device="meta", dtype=dtype, requires_grad=True)
    ctx = torch.randn(batch, tokens, context_dim, device="meta", dtype=dtype, requires_grad=True)
    kw = {"y": torch.randn(batch, adm, device="meta", dtype=dtype)} if adm else {}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        diffusion_model(x, torch.zeros(batch, device="meta"), context=ctx, **kw)
    for h in hooks:
        h.remove()
    total = sum(b for _blk, b in seen.values())
    for blk, b in seen.values():
        per_block[blk] = per_block.get(blk, 0) + b
    outside = per_block.pop(-1, 0)
    checkpointed = outside + sum(inputs.values()) + max(per_block.values())
    return total, checkpointed


def text_saved_bytes(encoder, batch: int, tokens: int = 77) -> int:
    """Bytes a CLIP text transformer keeps for backward for ``batch`` prompts (fp32 compute, as ComfyUI runs it)."""
    params = {id(p) for p in encoder.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if id(t) not in params and not _is_attention_probs(t, tokens):
            seen[id(t)] = t.numel() * t.element_size()
        return t

    width = encoder.transformer.get_input_embeddings().weight.shape[1]
    embeds = torch.randn(batch, tokens, width, device="meta", requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        encoder.transformer(None, None, embeds=embeds, num_tokens=[tokens] * batch, intermediate_output=encoder.layer_idx,
                            final_layer_norm_intermediate=encoder.layer_norm_hidden_state, dtype=torch.float32)
    return sum(seen.values())


def main() -> None:
    tiny_comfy.import_comfy(tiny_comfy.find_comfyui())
    import comfy.cli_args

    comfy.cli_args.args.use_pytorch_cross_attention = True  # what GPUs run; the split/sub-quadratic paths query free memory
    import comfy.supported_models

    checkpoint_blocks = load_pack("cpu")("adapters.autograd").checkpoint_blocks

    import comfy.sdxl_clip

    clip = comfy.sdxl_clip.SDXLClipModel(device=torch.device("meta"), dtype=torch.float16)
    for name in ("clip_l", "clip_g"):
        enc = getattr(clip, name)
        per_prompt = text_saved_bytes(enc, 2) - text_saved_bytes(enc, 1)
        print(f"{name}: {per_prompt / 2**20:.1f} MiB per prompt")
    families = {
        "sd1": (comfy.supported_models.SD15(dict(SD15_UNET)), 768, None),
        "sdxl": (comfy.supported_models.SDXL(tiny_comfy.full_sdxl_unet_config()), 2048, 2816),
    }
    print("# bytes kept for backward per latent pixel per sample, fp16 compute (weights and attention probabilities excluded)")
    for name, (config, context_dim, adm) in families.items():
        dm = config.get_model({}, device=torch.device("meta")).diffusion_model.to(torch.float16)
        for latent in (32, 64, 128):
            b1, c1 = saved_bytes(dm, checkpoint_blocks(dm), latent, 1, context_dim, adm)
            b2, c2 = saved_bytes(dm, checkpoint_blocks(dm), latent, 2, context_dim, adm)
            px = latent * latent
            print(f"{name} latent={latent}x{latent}: plain {(b2 - b1) / px:.0f} B/px, checkpointed {(c2 - c1) / px:.0f} B/px "
                  f"(batch 1 plain {b1 / 2**20:.0f} MiB, checkpointed {c1 / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
