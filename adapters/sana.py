"""SANA through ComfyUI_ExtraModels: its GEMMA dict (HF tokenizer + HF Gemma2) as a text encoder.

ExtraModels' SanaTextEncode prepends a "complex human instruction", pads to instruction + 298
tokens, keeps BOS plus the last 299 positions and zeroes padding rows (the model reads the caption
length from non-zero rows). This adapter builds exactly that sequence with the concept's rows
spliced in by a forward hook on the HF `embed_tokens`. HF Gemma scales embeddings by √hidden
inside that layer (transformers ≥ 5), so the hook writes raw row × embed_scale, where ComfyUI's own
Gemma takes raw rows and scales after splicing. Both models stay frozen and in eval mode: SANA's
`.train()` would drop captions.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import sys
from collections.abc import Iterator

import torch

from ..dti.errors import MissingPlaceholderError, TrainingError, UnsupportedModelError
from ..dti.templates import PLACEHOLDER
from .clip_text import TextCond, vocabulary_rows
from .families import HOST_FAMILIES

TEXT_LENGTH = 300  # SANA's model_max_length: BOS + 299 selected positions
KEY = HOST_FAMILIES["sana"].encoders[0].key  # SANA's one encoder (Gemma-2-2B-it) in the family table
# Key DTI SANA Instruction adds to the GEMMA dict: False turns the instruction off.
INSTRUCTION_FLAG = "dti_instruction"

log = logging.getLogger("ComfyUI-DTI")


def instruction_prefix() -> str:
    """The instruction SanaTextEncode puts before every prompt, read from the installed pack."""
    for name, module in list(sys.modules.items()):
        if name.endswith("Sana.nodes") and hasattr(module, "preset_te_prompt"):
            return "\n".join(module.preset_te_prompt)
    raise UnsupportedModelError(
        "a GEMMA text encoder was connected, but ComfyUI_ExtraModels (which defines SANA's text encoding) is not "
        "loaded; install Efficient-Large-Model/ComfyUI_ExtraModels in custom_nodes"
    )


def _normalize_placeholder(prompt: str, name: str) -> str:
    """`embedding:name` and `{}` both mark the concept (stock prompts cannot load Gemma embeddings).

    The marker matches in any case: SANA prompts are often lowercased (diffusers' pipeline does), though
    SanaTextEncode, reproduced here, keeps the prompt as written.
    """
    marker = re.compile(r"embedding:" + re.escape(name) + r"(\.safetensors)?(?![\w.-])", re.IGNORECASE)
    return marker.sub(PLACEHOLDER, prompt)


class _Prepared:
    def __init__(self, ids: list[int], mask: list[int], slots: list[tuple[int, int]]) -> None:
        self.ids, self.mask, self.slots = ids, mask, slots  # slots: (position, row)


class SanaTextSide:
    """The trainer's TextSide for ExtraModels' GEMMA dict."""

    def __init__(self, encoder: SanaGemmaEncoder, name: str, cache_instruction: bool = True) -> None:
        self.encoder, self.name = encoder, name
        self.tokenizer, self.model = encoder.tokenizer, encoder.model
        self._n_rows: int | None = None
        self._cache: dict[str, _Prepared] = {}
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._hook = None
        self.cache_instruction = cache_instruction
        self._prefix = None  # (token ids, key/value cache, BOS hidden state) of the fixed instruction

    # -- lifetime: the embedding hook exists only while the side is open ----------------------

    def __enter__(self) -> SanaTextSide:
        self._hook = self.model.get_input_embeddings().register_forward_hook(self._splice)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _splice(self, module, inputs, output):
        if self._pending is None:
            return output
        batch_idx, pos_idx, values = self._pending
        scale = getattr(module, "embed_scale", None)
        values = values.to(output.dtype) * (scale.to(output.dtype) if torch.is_tensor(scale) else 1.0)
        out = output.clone()
        out[batch_idx, pos_idx] = values
        return out

    # -- TextSide protocol ----------------------------------------------------------------------

    def encoder_keys(self) -> list[str]:
        return [KEY]

    def vocabulary(self, key: str) -> torch.Tensor:
        return self.encoder.table(key)

    def _word_ids(self, words: str) -> list[int]:
        return list(self.tokenizer(words, add_special_tokens=False)["input_ids"])

    def initializer_rows(self, key: str, words: str) -> torch.Tensor:
        return vocabulary_rows(self.vocabulary(key), self._word_ids(words))

    def initializer_hidden(self, key: str, words: str) -> torch.Tensor:
        ids = self._word_ids(words)
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        with torch.no_grad():
            hidden = self.model(torch.tensor([bos + ids], device=self.encoder.device))[0]
        return hidden[0, len(bos):].detach().float()

    def bind_rows(self, n_rows: dict[str, int]) -> None:
        if self._n_rows != n_rows[KEY]:
            self._n_rows = int(n_rows[KEY])
            self._cache.clear()

    def prepare(self, prompt: str) -> _Prepared:
        if self._n_rows is None:
            raise RuntimeError("bind_rows() must be called before encoding")  # a programming error, not the user's
        if prompt not in self._cache:
            self._cache[prompt] = self._tokenize(prompt)
        return self._cache[prompt]

    def _tokenize(self, prompt: str) -> _Prepared:
        tok = self.tokenizer
        text = _normalize_placeholder(prompt, self.name)
        parts = text.split(PLACEHOLDER)
        if len(parts) < 2:
            raise MissingPlaceholderError(
                f"the prompt {prompt!r} does not mention the concept: write {{}} (or embedding:{self.name}) where it goes"
            )
        prefix = self.encoder.instruction
        limit = len(tok.encode(prefix)) + TEXT_LENGTH - 2  # SanaTextEncode's max_length
        # The first piece with special tokens, as the tokenizer sees the whole prompt's start; a
        # trailing space before the concept would become a stray '▁' piece.
        ids = list(tok(prefix + parts[0].rstrip(" "))["input_ids"])
        slots = []
        placeholder_id = tok.unk_token_id if tok.unk_token_id is not None else 0
        for i, part in enumerate(parts[1:], start=1):
            for row in range(self._n_rows):
                slots.append((len(ids), row))
                ids.append(placeholder_id)
            followed_by_concept = i < len(parts) - 1
            ids.extend(self._word_ids(part.rstrip(" ") if followed_by_concept else part))
        ids = ids[:limit]
        slots = [(p, r) for p, r in slots if p < limit]
        if not slots:
            raise TrainingError(f"the prompt {prompt!r} is so long that the concept falls past SANA's {TEXT_LENGTH} tokens")
        mask = [1] * len(ids) + [0] * (limit - len(ids))
        ids = ids + [tok.pad_token_id] * (limit - len(ids))
        return _Prepared(ids, mask, slots)

    def encode(self, prompts: list[str], rows: dict[str, torch.Tensor]) -> TextCond:
        prepared = [self.prepare(p) for p in prompts]
        if self.cache_instruction and torch.is_grad_enabled():
            fast = self._encode_after_instruction(prepared, rows)
            if fast is not None:
                return fast
        return self._encode_full(prepared, rows)

    def _instruction_cache(self):
        """Run the instruction once. Gemma is causal, so nothing after it changes its keys and values."""
        if self._prefix is None:
            ids = list(self.tokenizer(self.encoder.instruction)["input_ids"])
            keep = len(ids) - 1  # the last piece may merge with the user's first word
            if keep < 1:
                self._prefix = False
                return None
            with torch.no_grad():
                out = self.model(torch.tensor([ids[:keep]], device=self.encoder.device), use_cache=True)
            self._prefix = (ids[:keep], out.past_key_values, out.last_hidden_state[0, 0].detach())
        return self._prefix or None

    def _encode_after_instruction(self, prepared: list[_Prepared], rows: dict[str, torch.Tensor]) -> TextCond | None:
        """The training encode: only the prompt's tokens, against the cached instruction.

        SanaTextEncode's window is BOS + the 299 positions from the instruction's last piece on;
        padding rows are zero, so the padding needs no computing at all. Returns None (full path)
        if the cache cannot be used.
        """
        try:
            cached = self._instruction_cache()
            if cached is None:
                return None
            prefix_ids, cache, bos_hidden = cached
            keep = len(prefix_ids)
            suffixes = []
            for p in prepared:
                real = sum(p.mask)
                if p.ids[:keep] != prefix_ids or real - keep > TEXT_LENGTH - 1:
                    return None
                suffixes.append(p.ids[keep:real])
            device = self.encoder.device
            longest = max(len(x) for x in suffixes)
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([x + [pad] * (longest - len(x)) for x in suffixes], device=device)
            suffix_mask = torch.tensor([[1] * len(x) + [0] * (longest - len(x)) for x in suffixes], device=device)
            attention = torch.cat([torch.ones(len(suffixes), keep, dtype=suffix_mask.dtype, device=device), suffix_mask], dim=1)
            past = copy.deepcopy(cache)
            if len(suffixes) > 1:
                past.batch_repeat_interleave(len(suffixes))
            b_idx = torch.tensor([b for b, p in enumerate(prepared) for _ in p.slots], device=device)
            p_idx = torch.tensor([pos - keep for p in prepared for pos, _r in p.slots], device=device)
            r_idx = torch.tensor([r for p in prepared for _pos, r in p.slots], device=device)
            self._pending = (b_idx, p_idx, rows[KEY].to(device)[r_idx])
            try:
                hidden = self.model(ids, attention_mask=attention, past_key_values=past, use_cache=True)[0]
            finally:
                self._pending = None
        except (AttributeError, TypeError, RuntimeError, ValueError) as e:
            log.warning("ComfyUI-DTI: instruction caching unavailable (%s: %s); encoding the full prompt", type(e).__name__, e)
            self._prefix = False
            return None
        out = hidden.new_zeros(len(suffixes), TEXT_LENGTH, hidden.shape[-1])
        out[:, 0] = bos_hidden.to(hidden.dtype)
        width = min(longest, TEXT_LENGTH - 1)
        out[:, 1 : 1 + width] = hidden[:, :width] * suffix_mask[:, :width, None].to(hidden.dtype)
        return TextCond(cross_attn=out[:, None], pooled=None)

    def _encode_full(self, prepared: list[_Prepared], rows: dict[str, torch.Tensor]) -> TextCond:
        """Exactly SanaTextEncode's computation: the whole padded sequence, then its selection."""
        device = self.encoder.device
        ids = torch.tensor([p.ids for p in prepared], device=device)
        mask = torch.tensor([p.mask for p in prepared], device=device)
        b_idx = torch.tensor([b for b, p in enumerate(prepared) for _ in p.slots], device=device)
        p_idx = torch.tensor([pos for p in prepared for pos, _r in p.slots], device=device)
        r_idx = torch.tensor([r for p in prepared for _pos, r in p.slots], device=device)
        self._pending = (b_idx, p_idx, rows[KEY].to(device)[r_idx])
        try:
            hidden = self.model(ids, mask)[0]
        finally:
            self._pending = None
        select = [0] + list(range(-TEXT_LENGTH + 1, 0))
        embs = hidden[:, None][:, :, select]
        embs = embs * mask[:, select].unsqueeze(-1).to(embs.dtype)[:, None]
        return TextCond(cross_attn=embs, pooled=None)


class SanaGemmaEncoder:
    """ComfyUI_ExtraModels' GEMMA dict as the nodes' text encoder (the SANA family)."""

    def __init__(self, gemma: dict) -> None:
        self.gemma = gemma
        self.tokenizer = gemma["tokenizer"]
        self.model = gemma["text_encoder"]
        self.family = HOST_FAMILIES["sana"]
        # DTI SANA Instruction can turn the instruction off (the reference trained without it)
        self.instruction = instruction_prefix() if gemma.get(INSTRUCTION_FLAG, True) else ""

    def table(self, key: str) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    def decode(self, key: str, ids: list[int]) -> list[str]:
        return [str(t) for t in self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])]

    def position_probe(self, key: str):
        return None  # rotary positions

    def text_side(self, name: str) -> SanaTextSide:
        return SanaTextSide(self, name)

    def conditioning(self, name: str, prompt: str, vectors: dict[str, torch.Tensor]) -> list:
        """What SanaTextEncode returns for this prompt, with the concept's rows in place."""
        with torch.no_grad(), self.text_side(name) as side:
            side.bind_rows({KEY: int(vectors[KEY].shape[0])})
            embs = side.encode([prompt], {KEY: vectors[KEY].detach().float()}).cross_attn
        return [[embs, {}]]

    def plain_conditioning(self, prompt: str) -> list:
        """What ExtraModels' SanaTextEncode node returns for the prompt (it is the node that runs)."""
        import nodes

        encode = nodes.NODE_CLASS_MAPPINGS.get("SanaTextEncode")
        if encode is None:
            raise UnsupportedModelError("SANA previews need ComfyUI_ExtraModels' SanaTextEncode node, which is not loaded")
        return encode().encode(prompt, self.gemma)[0]

    @property
    def patchers(self) -> list:
        return []  # the HF model is not managed by ComfyUI

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        if self.model.training:
            raise TrainingError("the Gemma text encoder is in training mode; DTI keeps both models frozen in eval mode")
        yield
