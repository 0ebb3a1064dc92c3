"""TextSide over ComfyUI's own text encoders (comfy.sd.CLIP: SD1.x, SDXL, Lumina 2's Gemma, Flux.1's and
SD3.5's CLIP + T5 stacks, Chroma's T5).

Prompts are tokenized by a shallow copy of the CLIP's tokenizer whose `embedding:` lookup answers
our concept with *slot* markers, so the layout — 77-token sections, weights, punctuation, other
embeddings in the same prompt — is exactly what a stock `embedding:name` prompt gets. At encode
time the slots are replaced by the current rows (tensors with gradient); ComfyUI's
`process_tokens` splices any non-integer token as an embedding, and gradients flow back through it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..dti.errors import MissingPlaceholderError
from ..dti.templates import PLACEHOLDER

if TYPE_CHECKING:
    from ..dti.families import Encoder
    from .families import HostFamily

# Characters that may follow a concept name in a prompt without being part of it.
_TRAILING_PUNCT = ",.;:!?)]}'\""


class _Slot:
    """Position of row ``index`` of encoder ``key`` in a token list."""

    __slots__ = ("key", "index")

    def __init__(self, key: str, index: int) -> None:
        self.key, self.index = key, index

    def __repr__(self) -> str:
        return f"<slot {self.key}[{self.index}]>"


class _SlotRows:
    """Stands in for an (n, d) embedding while ComfyUI's tokenizer lays out the prompt.

    The tokenizer only reads ``.shape`` and indexes rows, so it places one slot per row.
    """

    def __init__(self, key: str, n: int) -> None:
        self.key = key
        self.shape = (n, 0)

    def __getitem__(self, index: int) -> _Slot:
        return _Slot(self.key, index)


def expand_placeholder(prompt: str, name: str) -> str:
    """Replace each "{}" with `embedding:name`, adding the space ComfyUI's prompt parser needs."""
    parts = prompt.split(PLACEHOLDER)
    text = parts[0]
    for part in parts[1:]:
        sep = "" if (not text or text[-1] in " \n(") else " "
        text += f"{sep}embedding:{name}{part}"
    return text


def wrap_prompt(wrapper: str, prompt: str) -> str:
    """The prompt inside a family's wrapper (e.g. Lumina 2's system prompt), "{}" marking where."""
    return prompt if wrapper == PLACEHOLDER else wrapper.replace(PLACEHOLDER, prompt, 1)


def _concept_lookup(original, key: str, name: str, n_rows: int):
    names = (name, f"{name}.safetensors", f"{name}.pt")

    def lookup(embedding_name: str):
        parts = embedding_name.split()
        first, leftover = (parts[0] if parts else ""), " ".join(parts[1:])
        for candidate in names:
            if first == candidate:
                return _SlotRows(key, n_rows), leftover
            rest = first[len(candidate):]
            if first.startswith(candidate) and rest and rest[0] in _TRAILING_PUNCT:
                return _SlotRows(key, n_rows), f"{rest} {leftover}".strip()
        return original(embedding_name)

    return lookup


@dataclass
class PreparedPrompt:
    text: str
    tokens: dict[str, list[list[tuple[Any, float]]]]  # tokenizer output with slots
    simple: bool  # one section per encoder and every weight 1.0: can be batched directly
    slots: int


@dataclass
class TextCond:
    """Conditioning with gradient: what the denoise side needs from the text side."""

    cross_attn: torch.Tensor  # (B, L, C)
    pooled: torch.Tensor | None  # (B, P)
    attention_mask: torch.Tensor | None = None  # (B, L)
    # Per-sample context lengths when prompts of different lengths were zero-padded to one tensor
    # for a joint-attention model (no mask): each sample must be denoised with its own length.
    lengths: list[int] | None = None


def concept_tokenizer(clip, family: HostFamily, name: str, n_rows: dict[str, int], embedding_dirs: list[str] | None = None):
    """A shallow copy of clip.tokenizer that resolves `embedding:name` to slot markers."""
    tok = copy.copy(clip.tokenizer)
    for sub in family.encoders:
        attr = family.tokenizer_attr(sub.key)
        inner = copy.copy(getattr(tok, attr))
        inner._try_get_embedding = _concept_lookup(inner._try_get_embedding, sub.key, name, n_rows[sub.key])
        if inner.embedding_directory is None:
            # Some encoders (Gemma) are never given the embeddings folder, which disables
            # `embedding:` parsing altogether; a list turns it on for this copy only.
            inner.embedding_directory = list(embedding_dirs or [])
        setattr(tok, attr, inner)
    return tok


def prepare_prompt(clip, tokenizer, family: HostFamily, prompt: str, name: str) -> PreparedPrompt:
    text = expand_placeholder(prompt, name)
    kwargs = {"tokenizer_options": dict(clip.tokenizer_options)} if getattr(clip, "tokenizer_options", None) else {}
    tokens = tokenizer.tokenize_with_weights(text, False, **kwargs)
    sections = {sub.key: tokens[token_key(clip, family.tokenizer_attr(sub.key))] for sub in family.encoders}
    slots = {key: sum(isinstance(t, _Slot) for section in secs for t, _w in section) for key, secs in sections.items()}
    if min(slots.values()) == 0:
        raise MissingPlaceholderError(
            f"the prompt {prompt!r} does not mention the concept: write embedding:{name} (or {{}}) where it "
            "should appear, e.g. 'a photo of embedding:" + name + " on a beach'"
        )
    simple = all(len(secs) == 1 and all(w == 1.0 for _t, w in secs[0]) for secs in sections.values())
    return PreparedPrompt(text=text, tokens=tokens, simple=simple, slots=max(slots.values()))


def token_key(clip, attr: str) -> str:
    """Key of a sub-encoder in the token dict from its tokenizer attribute: SDXL, Flux and SD3 use
    "l"/"g" (and "t5xxl"), the SD1Tokenizer family (SD1.x, Lumina 2, Chroma) its clip_name."""
    inner = getattr(clip.tokenizer, "clip_name", None)
    if inner is not None and getattr(clip.tokenizer, "clip", None) == attr:
        return inner
    return {"clip_l": "l", "clip_g": "g"}.get(attr, attr)


def substitute(tokens: dict[str, list], rows: dict[str, torch.Tensor]) -> dict[str, list]:
    """The token dict with every slot replaced by its row (views, so gradients reach ``rows``)."""
    out = {}
    for key, sections in tokens.items():
        out[key] = [[(rows[t.key][t.index] if isinstance(t, _Slot) else t, w) for t, w in section] for section in sections]
    return out


def token_table(module, encoder: Encoder) -> torch.Tensor:
    """The rows of a ComfyUI sub-encoder's token table its tokenizer can produce (the family
    table's ``reachable_rows``; the whole table where that is 0)."""
    table = module.transformer.get_input_embeddings().weight
    return table[: encoder.reachable_rows] if encoder.reachable_rows else table


def vocabulary_rows(table: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Rows of a token table for ids, fp32, detached; (0, width) for no ids."""
    if not ids:
        return table[:0].detach().float()
    return table[torch.tensor(ids, dtype=torch.long, device=table.device)].detach().float()


def weights_hash(table: torch.Tensor) -> str:
    """A short fingerprint of a vocabulary table (first 512 rows, rounded), to tell fine-tunes apart."""
    rows = table[:512].detach().to(torch.float32).cpu()
    return hashlib.sha256((rows * 1e4).round().to(torch.int64).numpy().tobytes()).hexdigest()[:16]


@dataclass
class _TokenEmbeds:
    """SDClipModel.process_tokens' result for one prompt with zero rows in the concept's slots."""

    embeds: torch.Tensor  # (1, L, width) float32
    mask: torch.Tensor  # (1, L)
    num_tokens: list[int]
    info: list  # embeds_info: where spliced rows sit
    slots: list[tuple[int, _Slot]]  # (position in the sequence, slot)


def _fill_slots(parts: list[_TokenEmbeds], rows: dict[str, torch.Tensor]) -> tuple:
    """process_tokens' result for the batch, the current rows written into their slots (with gradient)."""
    embeds = torch.cat([p.embeds for p in parts])
    where = [(b, i, slot) for b, p in enumerate(parts) for i, slot in p.slots]
    values = torch.stack([rows[slot.key][slot.index] for _b, _i, slot in where]).to(embeds)
    index = (torch.tensor([b for b, _i, _s in where]), torch.tensor([i for _b, i, _s in where]))
    embeds = embeds.index_put(index, values)
    # As ComfyUI returns it: masks and counts per prompt, embeds_info of the last prompt.
    return embeds, torch.cat([p.mask for p in parts]), [n for p in parts for n in p.num_tokens], parts[-1].info


@contextlib.contextmanager
def _processed_tokens(encoder, processed: tuple) -> Iterator[None]:
    """Answer the encoder's next process_tokens call with ``processed``; the rest of its forward is stock."""
    encoder.process_tokens = lambda tokens, device: processed
    try:
        yield
    finally:
        del encoder.process_tokens


class ClipTextSide:
    """The trainer's TextSide for a comfy.sd.CLIP of a known family.

    Call ``close()`` (or use as a context manager) to put the encoder's layer options back.
    """

    def __init__(self, clip, family: HostFamily, name: str) -> None:
        self.clip, self.family, self.name = clip, family, name
        self.model = clip.cond_stage_model
        self.subs = {sub.key: getattr(self.model, family.attr(sub.key)) for sub in family.encoders}
        self.sub_tokenizers = {sub.key: getattr(clip.tokenizer, family.tokenizer_attr(sub.key)) for sub in family.encoders}
        self.prompt_wrapper = family.prompt_wrapper  # e.g. Lumina 2's system prompt around the user prompt
        self._n_rows: dict[str, int] | None = None
        self._tokenizer = None
        self._cache: dict[str, PreparedPrompt] = {}
        self._embeds_cache: dict[tuple, _TokenEmbeds | None] = {}
        self._apply_clip_options()

    # -- TextSide protocol ------------------------------------------------------------------------

    def encoder_keys(self) -> list[str]:
        return [sub.key for sub in self.family.encoders]

    def vocabulary(self, key: str) -> torch.Tensor:
        return token_table(self.subs[key], self.family.encoder(key))

    def _initializer_ids(self, key: str, words: str) -> list[int]:
        tok = self.sub_tokenizers[key]
        end = -1 if tok.tokenizer_adds_end_token else None
        return list(tok.tokenizer(words)["input_ids"][tok.tokens_start:end])

    def initializer_rows(self, key: str, words: str) -> torch.Tensor:
        return vocabulary_rows(self.vocabulary(key), self._initializer_ids(key, words))

    def initializer_hidden(self, key: str, words: str) -> torch.Tensor:
        tok = self.sub_tokenizers[key]
        k = len(self._initializer_ids(key, words))
        section = tok.tokenize_with_weights(words)[0]
        with torch.no_grad():
            z = self.subs[key].encode([[t for t, _w in section]])[0]
        return z[0, tok.tokens_start : tok.tokens_start + k].detach().float()

    def encode(self, prompts: list[str], rows: dict[str, torch.Tensor]) -> TextCond:
        prepared = [self.prepare(p) for p in prompts]
        if all(p.simple for p in prepared) and self._batchable(prepared):
            return self._encode_batched(prepared, rows)
        return self._stack([self._encode_one(p, rows) for p in prepared])

    def _batchable(self, prepared: list[PreparedPrompt]) -> bool:
        """Whether one batched encoder call gives every prompt what it gets alone: token lists of
        one length, or pads the encoder masks out (Gemma). T5 attends to its pads unmasked, so a
        longer caption beside the 256-token (Flux) / 77-token (SD3) templates is encoded alone."""
        for sub in self.family.encoders:
            key = token_key(self.clip, self.family.tokenizer_attr(sub.key))
            if len({len(p.tokens[key][0]) for p in prepared}) > 1 and not self.subs[sub.key].enable_attention_masks:
                return False
        return True

    # -- prompts ----------------------------------------------------------------------------------

    def bind_rows(self, n_rows: dict[str, int]) -> None:
        """Fix how many rows per encoder the concept has (the tokenizer lays out that many slots)."""
        if self._n_rows != n_rows:
            self._n_rows = dict(n_rows)
            self._tokenizer = concept_tokenizer(self.clip, self.family, self.name, self._n_rows)
            self._cache.clear()
            self._embeds_cache.clear()

    def prepare(self, prompt: str) -> PreparedPrompt:
        if self._tokenizer is None:
            raise RuntimeError("bind_rows() must be called before encoding")  # a programming error, not the user's
        if prompt not in self._cache:
            wrapped = wrap_prompt(self.prompt_wrapper, prompt)
            self._cache[prompt] = prepare_prompt(self.clip, self._tokenizer, self.family, wrapped, self.name)
        return self._cache[prompt]

    # -- encoding ---------------------------------------------------------------------------------

    def _apply_clip_options(self) -> None:
        # What CLIP.encode_from_tokens does before every encode (CLIPSetLastLayer's choice included).
        self.model.reset_clip_options()
        if self.clip.layer_idx is not None:
            self.model.set_clip_options({"layer": self.clip.layer_idx})

    def close(self) -> None:
        self.model.reset_clip_options()

    def __enter__(self) -> ClipTextSide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _encode_batched(self, prepared: list[PreparedPrompt], rows: dict[str, torch.Tensor]) -> TextCond:
        outs = {}
        for sub in self.family.encoders:
            key = token_key(self.clip, self.family.tokenizer_attr(sub.key))
            enc = self.subs[sub.key]
            batch = [p.tokens[key][0] for p in prepared]
            longest = max(len(b) for b in batch)
            if any(len(b) != longest for b in batch):
                # Unpadded tokenizers (Gemma) give prompts of different lengths. Pad at the end: the
                # encoder is causal and masks the pads, so real tokens encode as they would alone.
                pad = enc.special_tokens["pad"]
                batch = [b + [(pad, 1.0)] * (longest - len(b)) for b in batch]
            parts = [self._token_embeds(sub.key, p.text, b) for p, b in zip(prepared, batch)]
            if any(part is None for part in parts):
                outs[sub.key] = enc.encode([[rows[t.key][t.index] if isinstance(t, _Slot) else t for t, _w in b] for b in batch])
            else:
                with _processed_tokens(enc, _fill_slots(parts, rows)):
                    outs[sub.key] = enc.encode([[t for t, _w in b] for b in batch])
        return self._combine(outs)

    def _token_embeds(self, key: str, text: str, tokens: list) -> _TokenEmbeds | None:
        """The stock token embeddings of a prompt with zero rows in its slots, made once per prompt.

        SDClipModel.process_tokens walks every token in Python and splices each row in with a
        torch.cat on every call, though only the rows change between steps. Its result for zero rows
        — embeddings, attention mask, token count — is kept; each step writes the rows into a copy,
        which gives the same tensor bit for bit. Prompts with other embeddings are left to the stock
        path (their rows shift positions).
        """
        cache_key = (key, text, len(tokens))
        if cache_key not in self._embeds_cache:
            if not all(isinstance(t, (int, _Slot)) for t, _w in tokens):
                self._embeds_cache[cache_key] = None
            else:
                enc = self.subs[key]
                table = enc.transformer.get_input_embeddings().weight
                zero = torch.zeros(table.shape[1], dtype=torch.float32)
                with torch.no_grad():
                    embeds, mask, num_tokens, info = enc.process_tokens(
                        [[zero if isinstance(t, _Slot) else t for t, _w in tokens]], table.device)
                slots = [(i, t) for i, (t, _w) in enumerate(tokens) if isinstance(t, _Slot)]
                self._embeds_cache[cache_key] = _TokenEmbeds(embeds, mask, num_tokens, info, slots)
        return self._embeds_cache[cache_key]

    def _combine(self, outs: dict[str, tuple]) -> TextCond:
        """The batched sub-encoder outputs joined as the family's encode_token_weights joins them
        (checked against it, prompt by prompt, in the tests)."""
        mask = None
        combine = self.family.combine
        ordered = [outs[key] for key in self.family.encoder_keys]  # in the family row's encoder order
        if combine == "flux":  # FluxClipModel: T5's sequence, CLIP-L's pooled vector
            clip_l, t5 = ordered
            return TextCond(cross_attn=t5[0], pooled=clip_l[1])
        if combine == "sd3":  # SD3ClipModel: [CLIP-L ‖ CLIP-G, zero-padded to T5's width ; T5]
            (lz, lp), (gz, gp), t5 = ordered[0][:2], ordered[1][:2], ordered[2][0]
            cut = min(lz.shape[1], gz.shape[1])
            lg = torch.cat([lz[:, :cut], gz[:, :cut]], dim=-1)
            lg = torch.nn.functional.pad(lg, (0, t5.shape[-1] - lg.shape[-1]))  # ComfyUI pads to 4096 = T5-XXL's width
            return TextCond(cross_attn=torch.cat([lg, t5], dim=-2), pooled=torch.cat([lp, gp], dim=-1))
        if combine == "concat":
            zs = [outs[sub.key][0] for sub in self.family.encoders]
            cut = min(z.shape[1] for z in zs)
            cond = torch.cat([z[:, :cut] for z in zs], dim=-1)
            pooled = outs[self.family.encoders[-1].key][1]
        else:
            o = outs[self.family.encoders[0].key]
            cond, pooled = o[0], o[1]
            if len(o) > 2 and "attention_mask" in o[2]:
                mask = o[2]["attention_mask"]
        return TextCond(cross_attn=cond, pooled=pooled, attention_mask=mask)

    def _encode_one(self, p: PreparedPrompt, rows: dict[str, torch.Tensor]) -> TextCond:
        o = self.model.encode_token_weights(substitute(p.tokens, rows))
        mask = o[2].get("attention_mask") if len(o) > 2 else None
        return TextCond(cross_attn=o[0], pooled=o[1], attention_mask=mask)

    def _stack(self, conds: list[TextCond]) -> TextCond:
        lengths = [c.cross_attn.shape[1] for c in conds]
        if len(set(lengths)) > 1 and self.family.joint_attention and all(c.attention_mask is None for c in conds):
            # Text and image tokens share one attention: a repeated context would change it, so pad
            # with zero rows and record each sample's length; the denoise side cuts them back.
            longest = max(lengths)
            xs = [torch.nn.functional.pad(c.cross_attn, (0, 0, 0, longest - c.cross_attn.shape[1])) for c in conds]
            return TextCond(torch.cat(xs), _cat_pooled(conds), lengths=lengths)
        if any(c.attention_mask is not None for c in conds):
            # Masked encoders (Gemma): pad to the longest prompt with zero rows and a zero mask.
            longest = max(lengths)
            xs, ms = [], []
            for c in conds:
                pad = longest - c.cross_attn.shape[1]
                xs.append(torch.nn.functional.pad(c.cross_attn, (0, 0, 0, pad)))
                m = c.attention_mask if c.attention_mask is not None else torch.ones(c.cross_attn.shape[:2])
                ms.append(torch.nn.functional.pad(m.to(xs[-1].device), (0, pad)))
            return TextCond(torch.cat(xs), _cat_pooled(conds), torch.cat(ms))
        # CLIP sections of 77: repeating a context k times leaves cross-attention unchanged, which
        # is how ComfyUI itself batches prompts of different lengths.
        target = math.lcm(*lengths)
        xs = [c.cross_attn.repeat(1, target // c.cross_attn.shape[1], 1) for c in conds]
        return TextCond(torch.cat(xs), _cat_pooled(conds))


def _cat_pooled(conds: list[TextCond]) -> torch.Tensor | None:
    if any(c.pooled is None for c in conds):
        return None
    return torch.cat([c.pooled for c in conds])


def encode_conditioning(clip, family: HostFamily, name: str, prompt: str, vectors: dict[str, torch.Tensor]) -> list:
    """CONDITIONING for a prompt with the concept's rows, through the stock encode path.

    Uses clip.encode_from_tokens_scheduled exactly as CLIPTextEncode does, so for the same rows
    the result equals a stock `embedding:name` prompt bit for bit.
    """
    n_rows = {k: int(v.shape[0]) for k, v in vectors.items()}
    tok = concept_tokenizer(clip, family, name, n_rows)
    prepared = prepare_prompt(clip, tok, family, wrap_prompt(family.prompt_wrapper, prompt), name)
    rows = {k: v.detach().to(torch.float32).cpu() for k, v in vectors.items()}
    return clip.encode_from_tokens_scheduled(substitute(prepared.tokens, rows))
