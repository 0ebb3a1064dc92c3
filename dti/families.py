"""THE family table: every fact about a model family the pack knows, in one place.

Per family: its label, its text encoders (file key, width, encoder identity, label), the tensor keys
its files use, and the training defaults. File layouts, width hints, supported lists and labels are
all derived from these rows. The host layer (``adapters/``) only maps ComfyUI classes to rows.

Adding a family = one ``Family`` row here (plus its encoders if new) + an adapter where the
encoder or model is new to the host layer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Encoder:
    """One text encoder whose token table a concept has rows for."""

    key: str  # the pack's encoder key, used in concepts and checkpoints (clip_l, clip_g, gemma)
    width: int  # the real model's embedding width (tiny test models may be narrower)
    encoder_id: str  # which embedding space the rows live in; a concept for another id is refused
    label: str  # for people: "CLIP-L"
    aliases: tuple[str, ...] = ()  # other tensor keys tools write for this encoder (read only)
    # Rows of the token table the tokenizer can produce (0: all). m*, μ statistics and nearest-token
    # reports use only these: T5's table has 32128 rows for hardware alignment, its tokenizer 32100
    # ids — the last 28 rows are never looked up, so they hold whatever initialization left there.
    reachable_rows: int = 0


@dataclass(frozen=True)
class TrainDefaults:
    """What "family default" (-1 on a node input) means for this family."""

    resolution: int
    batch_size: int
    grad_accum: int
    steps: int
    lr: float  # dti: the angle (radians) each row turns per step
    kappa: float


@dataclass(frozen=True)
class PreviewDefaults:
    """What "family default" means for the preview sampler (ComfyUI sampler and scheduler names)."""

    steps: int
    cfg: float
    sampler: str
    scheduler: str
    size: int  # square side in pixels


@dataclass(frozen=True)
class Family:
    name: str  # stored in concept files
    label: str  # long, for messages: "SDXL (CLIP-L + CLIP-G)"
    short: str  # short, for summaries: "SDXL"
    encoders: tuple[Encoder, ...]
    file_keys: tuple[str, ...]  # tensor key per encoder, in the layout stock loaders read
    defaults: TrainDefaults
    preview: PreviewDefaults
    # How the encoders' outputs combine: "concat" (features side by side, pooled from the last:
    # SDXL), "single", "flux" (T5's sequence, CLIP-L's pooled vector) or "sd3" (CLIP-L ‖ CLIP-G
    # features padded to T5's width, then T5's sequence after them; pooled CLIP-L ‖ CLIP-G).
    combine: str = "single"
    # The model reads one caption length for a whole batch: batch only identical prompts.
    identical_prompt_batches: bool = False
    # Text and image tokens share the attention (Flux, MMDiT): prompts of different lengths may not
    # be batched by repeating the shorter context, as cross-attention models allow.
    joint_attention: bool = False
    # Stock prompts load `embedding:name` for this family (ComfyUI never does for Gemma).
    stock_embedding_prompts: bool = True
    # The host provides this family only when a third-party pack is installed.
    requires: str = ""
    # Distilled-guidance input the model is trained at (Flux.1 dev); None: the host's default.
    guidance: float | None = None

    @property
    def encoder_keys(self) -> tuple[str, ...]:
        return tuple(e.key for e in self.encoders)

    @property
    def file_layout(self) -> dict[str, str]:
        """Encoder key → tensor key in the files this family's concepts are written as."""
        return dict(zip(self.encoder_keys, self.file_keys))

    def encoder(self, key: str) -> Encoder:
        for enc in self.encoders:
            if enc.key == key:
                return enc
        # A programming error: callers pass keys of this family's own encoders.
        raise KeyError(f"{self.label} has no encoder {key!r}; it has {', '.join(self.encoder_keys)}")


CLIP_L = Encoder("clip_l", 768, "clip-l", "CLIP-L")
CLIP_G = Encoder("clip_g", 1280, "clip-g", "CLIP-G")
GEMMA2 = Encoder("gemma", 2304, "gemma-2-2b", "Gemma-2-2B", aliases=("gemma2_2b",))
GEMMA2_IT = Encoder("gemma", 2304, "gemma-2-2b-it", "Gemma-2-2B-it", aliases=("gemma2_2b",))
# T5 v1.1 XXL encoder (Flux.1, SD3.x, Chroma): OneTrainer writes its rows under "t5".
T5XXL = Encoder("t5xxl", 4096, "t5-v1.1-xxl", "T5-XXL", aliases=("t5",), reachable_rows=32100)

# Reference defaults (DESIGN §1): SDXL 768², batch 4, 400 steps, η 0.01 × batch 4, κ 1e-4;
# SANA batch 2 × 2 accumulation, 500 steps, κ 5e-5 at 1024² — used for every Gemma-2 flow model.
_CLIP_DEFAULTS = dict(batch_size=4, grad_accum=1, steps=400, lr=0.04, kappa=1e-4)
_GEMMA_DEFAULTS = TrainDefaults(resolution=1024, batch_size=2, grad_accum=2, steps=500, lr=0.04, kappa=5e-5)
# Flux.1, SD3.5 and Chroma are flow-matching DiTs at 1024² with a large T5 sequence encoder: the
# paper's flow-model run (SANA) is the closer reference than SDXL's ε-UNet — same loss family, same
# resolution, same effective batch 4 at half the memory per step. κ stays SANA's 5e-5.
_FLOW_DIT_DEFAULTS = _GEMMA_DEFAULTS
# Preview sampling: each family's usual stock-workflow settings, at 20 steps to keep previews cheap.
_SDXL_PREVIEW = PreviewDefaults(steps=20, cfg=6.0, sampler="dpmpp_2m", scheduler="karras", size=1024)
_SD1_PREVIEW = PreviewDefaults(steps=20, cfg=7.0, sampler="dpmpp_2m", scheduler="karras", size=512)
_LUMINA2_PREVIEW = PreviewDefaults(steps=20, cfg=4.0, sampler="res_multistep", scheduler="simple", size=1024)
_SANA_PREVIEW = PreviewDefaults(steps=20, cfg=4.5, sampler="euler", scheduler="simple", size=1024)
# Flux dev is guidance-distilled: cfg 1 (its guidance input keeps ComfyUI's default 3.5 when sampling).
_FLUX_PREVIEW = PreviewDefaults(steps=20, cfg=1.0, sampler="euler", scheduler="simple", size=1024)
_SD3_PREVIEW = PreviewDefaults(steps=20, cfg=4.5, sampler="euler", scheduler="sgm_uniform", size=1024)
_CHROMA_PREVIEW = PreviewDefaults(steps=20, cfg=4.0, sampler="euler", scheduler="simple", size=1024)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sdxl", "SDXL (CLIP-L + CLIP-G)", "SDXL", (CLIP_L, CLIP_G), ("clip_l", "clip_g"),
               TrainDefaults(resolution=768, **_CLIP_DEFAULTS), _SDXL_PREVIEW, combine="concat"),
        # kohya/A1111 key: ComfyUI reads it through its first-tensor fallback.
        Family("sd1", "SD1.x (CLIP-L)", "SD1.x", (CLIP_L,), ("emb_params",), TrainDefaults(resolution=512, **_CLIP_DEFAULTS),
               _SD1_PREVIEW),
        Family("lumina2", "Lumina 2 (Gemma-2-2B)", "Lumina 2", (GEMMA2,), ("gemma",), _GEMMA_DEFAULTS, _LUMINA2_PREVIEW,
               stock_embedding_prompts=False),
        Family("sana", "SANA (Gemma-2-2B-it)", "SANA", (GEMMA2_IT,), ("gemma",), _GEMMA_DEFAULTS, _SANA_PREVIEW,
               identical_prompt_batches=True, stock_embedding_prompts=False, requires="ComfyUI_ExtraModels"),
        # Guidance 1.0 for Flux.1 dev, as kohya's and ai-toolkit's Flux recipes train it: the
        # guidance-distilled model then predicts the plain conditional velocity, so the concept is
        # fitted to the images rather than to a guidance-amplified prediction. Schnell ignores it.
        Family("flux", "Flux.1 (CLIP-L + T5-XXL)", "Flux.1", (CLIP_L, T5XXL), ("clip_l", "t5xxl"), _FLOW_DIT_DEFAULTS,
               _FLUX_PREVIEW, combine="flux", joint_attention=True, guidance=1.0),
        Family("sd3", "SD3.5 (CLIP-L + CLIP-G + T5-XXL)", "SD3.5", (CLIP_L, CLIP_G, T5XXL), ("clip_l", "clip_g", "t5xxl"),
               _FLOW_DIT_DEFAULTS, _SD3_PREVIEW, combine="sd3", joint_attention=True),
        Family("chroma", "Chroma (T5-XXL)", "Chroma", (T5XXL,), ("t5xxl",), _FLOW_DIT_DEFAULTS, _CHROMA_PREVIEW,
               joint_attention=True),
    )
}

# Widths of encoders the pack does not train, so that a file for them is named in errors.
OTHER_WIDTHS: dict[int, str] = {1024: "OpenCLIP-H (SD2.x)", 2560: "Gemma-3-4B"}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:  # a programming error: names come from this table
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def all_encoders() -> dict[str, list[Encoder]]:
    """Every encoder key with its variants (one key may have several identities: Gemma-2 and -it)."""
    out: dict[str, list[Encoder]] = {}
    for fam in FAMILIES.values():
        for enc in fam.encoders:
            if enc not in out.setdefault(enc.key, []):
                out[enc.key].append(enc)
    return out


ENCODER_KEYS: tuple[str, ...] = tuple(all_encoders())


def defaults_by_family(setting: str) -> str:
    """A TrainDefaults field across the families, for tooltips: "SDXL, SD1.x 400; Lumina 2, SANA, … 500"."""
    groups: dict[object, list[str]] = {}
    for fam in FAMILIES.values():
        groups.setdefault(getattr(fam.defaults, setting), []).append(fam.short)
    return "; ".join(f"{', '.join(names)} {value:g}" for value, names in groups.items())


def supported_text() -> str:
    """The families, for messages: "SDXL (CLIP-L + CLIP-G), SD1.x (CLIP-L), …"."""
    return ", ".join(f.label + (f" (through {f.requires})" if f.requires else "") for f in FAMILIES.values())


def width_to_encoder() -> dict[int, str]:
    """Encoder key by real width, for files that only say how wide their vectors are."""
    return {enc.width: key for key, variants in all_encoders().items() for enc in variants}


def tensor_key_to_encoder() -> dict[str, str]:
    """Tensor keys that name their encoder outright (the keys we write and known aliases)."""
    out = {key: key for key in ENCODER_KEYS}
    for key, variants in all_encoders().items():
        for enc in variants:
            out.update({alias: key for alias in enc.aliases})
    return out


def describe_width(width: int) -> str:
    """What a width usually belongs to, for messages about mismatched files:
    "CLIP-L (SD1.x, or SDXL's first encoder)"."""
    width = int(width)
    ordinals = ("first", "second", "third", "fourth")
    for key, variants in all_encoders().items():
        if variants[0].width != width:
            continue
        alone, shared = [], []
        for fam in FAMILIES.values():
            if key in fam.encoder_keys:
                if len(fam.encoders) == 1:
                    alone.append(fam.short)
                else:
                    shared.append(f"{fam.short}'s {ordinals[fam.encoder_keys.index(key)]} encoder")
        users = ", or ".join(filter(None, [" / ".join(alone), *shared]))
        return f"{variants[0].label} ({users})"
    return OTHER_WIDTHS.get(width, f"an encoder of width {width}")


def families_with_keys(keys: set[str] | frozenset[str]) -> list[Family]:
    return [f for f in FAMILIES.values() if set(f.encoder_keys) == set(keys)]


def guess_family(keys: set[str] | frozenset[str], name: str | None = None) -> str:
    """Which family a set of encoder rows is for, in words."""
    if name in FAMILIES:
        return FAMILIES[name].short
    matches = families_with_keys(keys)
    if matches:
        return " / ".join(dict.fromkeys(f.short for f in matches))
    partial = [f.short for f in FAMILIES.values() if set(keys) < set(f.encoder_keys)]
    if partial:
        return f"part of a {' / '.join(partial)} model"
    return "an unknown family"
