"""The training encode keeps each prompt's token embeddings between steps: the conditioning and the rows'
gradients equal ComfyUI's own batched encode (process_tokens on every call) bit for bit."""

import pytest
import torch
from comfy_harness import submodule, tiny_objects

PROMPTS = ["a photo of a {}", "a rendering of the {}, cropped", "{} and {} on a table", "the photo of a small {}"]


def stock_encode(clip_text, text, prompts, rows):
    """What the training encode did before: splice the rows into the token lists and call encode()."""
    prepared = [text.prepare(p) for p in prompts]
    outs = {}
    for sub in text.family.encoders:
        key = clip_text.token_key(text.clip, text.family.attr(sub.key))
        batch = [[rows[t.key][t.index] if isinstance(t, clip_text._Slot) else t for t, _w in p.tokens[key][0]] for p in prepared]
        longest = max(len(b) for b in batch)
        batch = [b + [text.subs[sub.key].special_tokens["pad"]] * (longest - len(b)) for b in batch]
        outs[sub.key] = text.subs[sub.key].encode(batch)
    return text._combine(outs)


@pytest.mark.parametrize("family", ["sdxl", "sd1", "lumina2"])
def test_cached_token_embeddings_give_the_stock_encode_bit_for_bit(pack, comfy_dirs, family):
    clip_text, text_encoder = submodule(pack, "adapters.clip_text"), submodule(pack, "adapters.text_encoder")
    _model, clip, _vae = tiny_objects(family)
    encoder = text_encoder.text_encoder(clip)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode(False), torch.enable_grad(), encoder.training(), encoder.text_side("cached") as text:
        widths = {k: text.vocabulary(k).shape[1] for k in text.encoder_keys()}
        text.bind_rows({k: 2 for k in widths})
        base = {k: torch.randn(2, w, generator=g) * 0.3 for k, w in widths.items()}
        results = []
        for step in range(3):  # the cache is filled on the first step and reused after
            rows_a = {k: (v * (1 + step)).requires_grad_(True) for k, v in base.items()}
            rows_b = {k: (v * (1 + step)).requires_grad_(True) for k, v in base.items()}
            ours = text.encode(PROMPTS, rows_a)
            stock = stock_encode(clip_text, text, PROMPTS, rows_b)
            assert torch.equal(ours.cross_attn, stock.cross_attn)
            if stock.pooled is not None:
                assert torch.equal(ours.pooled, stock.pooled)
            if stock.attention_mask is not None:
                assert torch.equal(ours.attention_mask, stock.attention_mask)
            weights = torch.randn(ours.cross_attn.shape, generator=g)
            (ours.cross_attn * weights).sum().backward()
            (stock.cross_attn * weights).sum().backward()
            for k in rows_a:
                assert torch.equal(rows_a[k].grad, rows_b[k].grad), k
            results.append(ours.cross_attn)
        assert len(text._embeds_cache) == len(PROMPTS) * len(widths)
        assert all(entry is not None for entry in text._embeds_cache.values())  # the cached path ran
