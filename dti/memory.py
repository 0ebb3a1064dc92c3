"""How much memory a training step's activations take, per family: the host-free half of the estimate
the pack hands to the host's memory manager (adapters/models.py adds the host's facts).

Why it matters: the weights are not the whole story in training. Autograd keeps every activation
the backward pass needs until backward runs, so a UNet that samples comfortably can run out of
memory in training. The memory manager can only leave room for that (by loading part of the
weights and casting the rest per layer) if it is told how much room the step needs.

The figures are bytes kept for backward per latent pixel per sample at 2-byte compute (fp16/bf16),
without and with gradient checkpointing, plus per prompt for the text encoders (fp32 compute).
SD1.x and SDXL are measured with benchmarks/activation_memory.py (saved-tensor hooks on ComfyUI's
own full-size UNet and CLIP on the meta device; attention probabilities excluded because GPUs run
flash / memory-efficient attention). The transformer families use the usual per-layer estimate for
a transformer block without stored attention scores, 34 × hidden bytes per token per layer at 2-byte
compute (Korthikanti et al., 2022), and with checkpointing each layer's input (2 × hidden) plus one
layer recomputed; Gemma prompts are counted at 300 tokens (SANA's instruction + prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class ActivationCost:
    per_latent_pixel: int  # bytes per latent pixel per sample, 2-byte compute, no checkpointing
    per_latent_pixel_checkpointed: int  # the same with every block recomputed in backward
    per_prompt_text: int  # bytes the text encoders keep per prompt


def _transformer(hidden: int, layers: int, latent_pixels_per_token: int) -> tuple[int, int]:
    plain = 34 * hidden * layers
    checkpointed = 2 * hidden * layers + 34 * hidden
    return plain // latent_pixels_per_token, checkpointed // latent_pixels_per_token


_GEMMA_PROMPT = 2 * 34 * 2304 * 26 * 300  # fp32 compute: twice the 2-byte figure


def _t5_prompt(tokens: int) -> int:
    """T5-XXL (hidden 4096, 24 layers) at fp32 compute for ``tokens`` tokens, plus CLIP-L's 28 MiB."""
    return 2 * 34 * 4096 * 24 * tokens + 28 * MIB

ACTIVATION_COSTS: dict[str, ActivationCost] = {
    # measured: 170-175 kB / 23-38 kB per latent pixel; CLIP-L 27 MiB per prompt
    "sd1": ActivationCost(176_000, 38_000, 28 * MIB),
    # measured: 393-407 kB / 64-66 kB per latent pixel; CLIP-L 27 + CLIP-G 73 MiB per prompt
    "sdxl": ActivationCost(408_000, 66_000, 100 * MIB),
    # NextDiT 2.6 B: hidden 2304, 26 layers, 2×2 latent pixels per token
    "lumina2": ActivationCost(*_transformer(2304, 26, 4), _GEMMA_PROMPT),
    # SANA 1.6 B: hidden 2240, 20 layers, one latent pixel per token (the 32× DC-AE latent)
    "sana": ActivationCost(*_transformer(2240, 20, 1), _GEMMA_PROMPT),
    # Flux.1 12 B: hidden 3072, 19 double + 38 single blocks, 2×2 latent pixels per token; T5 at 256 tokens.
    # Not measured: the formula, as for the Gemma families.
    "flux": ActivationCost(*_transformer(3072, 57, 4), _t5_prompt(256)),
    # SD3.5 Large: hidden 2432, 38 joint blocks, 2×2 latent pixels per token; T5 at 77 tokens + CLIP-G 73 MiB
    "sd3": ActivationCost(*_transformer(2432, 38, 4), _t5_prompt(77) + 73 * MIB),
    # Chroma: Flux's shape without CLIP-L
    "chroma": ActivationCost(*_transformer(3072, 57, 4), _t5_prompt(256) - 28 * MIB),
}

# Backward holds the gradients of a few activations beside the kept ones, and the allocator rounds up.
BACKWARD_MARGIN = 1.25


def activation_bytes(family: str, latent_pixels: int, batch: int, checkpointing: bool, compute_bytes: int = 2) -> int:
    """Bytes one training step keeps for backward: UNet/DiT activations for ``batch`` samples of
    ``latent_pixels`` each at ``compute_bytes`` per value, plus the text encoders' for ``batch`` prompts.

    A family missing from the table gets the largest per-pixel cost listed (an over-estimate only
    makes the memory manager keep more weights off the device).
    """
    cost = ACTIVATION_COSTS.get(family) or max(ACTIVATION_COSTS.values(), key=lambda c: c.per_latent_pixel)
    per_pixel = cost.per_latent_pixel_checkpointed if checkpointing else cost.per_latent_pixel
    denoise = per_pixel * latent_pixels * batch * compute_bytes / 2
    return int(BACKWARD_MARGIN * (denoise + cost.per_prompt_text * batch))
