"""The training loop's mechanics on a host-free toy model (the real models are in tests/integration).

The toy "text encoder" maps each encoder's concept rows through a fixed random matrix; the toy
"denoiser" wants that conditioning to equal a hidden target plus noise. Small enough to check
every mechanism — norms, NaN guard, accumulation, checkpoint/resume — exactly.
"""

import math

import pytest
import torch

from dti import checkpoint, sphere
from dti.errors import InputError
from dti.settings import TrainSettings
from dti.trainer import (
    Batch,
    BatchSampler,
    LatentExample,
    Trainer,
    TrainingDiverged,
    TrainingError,
)

WIDTHS = {"clip_l": 12, "clip_g": 16}


class ToyText:
    def __init__(self, seed=0, vocab=200):
        g = torch.Generator().manual_seed(seed)
        self.tables = {k: torch.randn(vocab, d, generator=g) * 0.3 for k, d in WIDTHS.items()}
        self.proj = {k: torch.randn(d, 8, generator=g) / math.sqrt(d) for k, d in WIDTHS.items()}
        self.encoded_prompts = []

    def encoder_keys(self):
        return list(WIDTHS)

    def vocabulary(self, key):
        return self.tables[key]

    def _ids(self, words):
        return [sum(map(ord, w)) % 200 for w in words.split()]

    def initializer_rows(self, key, words):
        if words == "<nothing>":  # a tokenizer that drops everything
            return self.tables[key][:0]
        return self.tables[key][self._ids(words)]

    def initializer_hidden(self, key, words):
        return self.initializer_rows(key, words) * 3.0

    def bind_rows(self, n_rows):
        self.n_rows = dict(n_rows)

    def prepare(self, prompt):
        assert "{}" in prompt
        return prompt

    def close(self):
        pass

    def encode(self, prompts, rows):
        self.encoded_prompts.extend(prompts)
        feats = sum(rows[k].sum(0) @ self.proj[k] for k in WIDTHS)
        return feats.expand(len(prompts), -1)


class ToyDenoise:
    def __init__(self, target, poison=None):
        self.target = target
        self.poison = poison or set()
        self.calls = 0

    def loss(self, batch, cond, generator):
        self.calls += 1
        if self.calls in self.poison:
            return cond.sum() * float("nan")
        noise = torch.randn(cond.shape, generator=generator) * 0.01
        return ((cond - self.target - noise) ** 2).mean() * batch.latents.mean().abs().clamp_min(1)


def examples(n=3, size=8):
    g = torch.Generator().manual_seed(1)
    return [LatentExample(latent=torch.randn(4, size, size + 2, generator=g), original_size=(64, 80),
                          flipped=torch.randn(4, size, size + 2, generator=g)) for _ in range(n)]


def make(method="dti", steps=20, poison=None, seed=42, **cfg):
    text = ToyText()
    hidden = {k: sphere.normalize(torch.randn(1, d, generator=torch.Generator().manual_seed(7))) for k, d in WIDTHS.items()}
    target = sum(0.4 * hidden[k].sum(0) @ text.proj[k] for k in WIDTHS)
    sampler = BatchSampler(examples(), batch_size=2, crop_size=(6, 6), downscale=8, random_crop=True, flip=True, seed=seed)
    patience = cfg.pop("nan_patience", 5)
    settings = config(name="toy", method=method, steps=steps, lr=cfg.pop("lr", 0.05), kappa=cfg.pop("kappa", 0.0), seed=seed, **cfg)
    return Trainer(text, ToyDenoise(target, poison), sampler, settings, nan_patience=patience), text


def config(**kw):
    """Resolved settings (every family default filled in) for the toy model."""
    return TrainSettings(**{"name": "x", "batch_size": 2, "grad_accum": 1, "resolution": 48, "steps": 10, "lr": 0.05,
                            "kappa": 0.0, **kw})


def test_dti_keeps_norm_at_m_star_and_lowers_loss():
    tr, text = make(steps=60)
    fixed = tr.sampler.next()
    before = tr.eval_loss(fixed, seed=0)
    res = tr.run()
    after = tr.eval_loss(fixed, seed=0)
    assert after < before * 0.5
    for key, enc in res.concept.encoders.items():
        m_star = float(text.tables[key].norm(dim=-1).mean())
        assert enc.m_star == pytest.approx(m_star, rel=1e-6)
        assert torch.allclose(enc.vectors().norm(dim=-1), torch.full((1,), m_star), rtol=1e-5)
    assert all(abs(r.norms[k] - tr.inits[k].m_star) <= 1e-5 * tr.inits[k].m_star for r in res.history for k in WIDTHS)


def test_ti_rescaled_ends_at_m_star_and_ti_does_not():
    tr, _ = make(method="ti", steps=30, lr=0.05)
    c = tr.run().concept
    norms = c.encoders["clip_l"].vectors().norm(dim=-1)
    assert not torch.allclose(norms, torch.full_like(norms, tr.inits["clip_l"].m_star), rtol=1e-3)
    tr2, _ = make(method="ti_rescaled", steps=30, lr=0.05)
    c2 = tr2.run().concept
    m = tr2.inits["clip_l"].m_star
    assert torch.allclose(c2.encoders["clip_l"].vectors().norm(dim=-1), torch.full((1,), m), rtol=1e-6)
    assert c2.method == "ti_rescaled"


def test_crossinit_starts_from_hidden_state_and_is_pulled_toward_it():
    tr, text = make(method="crossinit", steps=1, lr=1e-9)
    assert torch.allclose(tr.params["clip_l"].detach(), text.initializer_hidden("clip_l", "dog"))
    assert tr.inits["clip_l"].anchor is not None


def test_nan_steps_are_skipped_and_last_good_vectors_kept():
    tr, _ = make(steps=6, poison={3})
    tr.run()
    skipped = [r for r in tr.history if r.skipped]
    assert [r.step for r in skipped] == [3]
    assert len(tr.history) == 6 and all(math.isfinite(r.loss) for r in tr.history if not r.skipped)


def test_repeated_nans_stop_with_a_clear_error_and_keep_vectors():
    tr, _ = make(steps=20, poison=set(range(4, 40)), nan_patience=3)
    with pytest.raises(TrainingDiverged, match="NaN/inf for 3 steps in a row"):
        tr.run()
    good = tr.concept()  # still the vectors after step 3
    assert tr.step == 6
    assert torch.isfinite(good.encoders["clip_l"].directions).all()


def test_gradient_accumulation_calls_the_model_per_micro_batch():
    tr, text = make(steps=3, grad_accum=2)
    tr.run()
    assert tr.denoise.calls == 6
    assert len(text.encoded_prompts) == 12  # 3 steps × 2 micro-batches × batch 2


def test_resume_from_checkpoint_continues_identically(tmp_path):
    straight, _ = make(steps=10, kappa=0.01)
    straight.run()

    first, _ = make(steps=10, kappa=0.01, checkpoint_every=5)
    saved = []

    def on_ck(t):
        saved.append(checkpoint.save_checkpoint(t.state_dict(), tmp_path / f"ck_{t.step}.safetensors"))
        raise KeyboardInterrupt  # the run is interrupted right after its checkpoint

    with pytest.raises(KeyboardInterrupt):
        first.run(on_checkpoint=on_ck)
    assert first.step == 5 and len(saved) == 1

    resumed, _ = make(steps=10, kappa=0.01)
    resumed.load_state_dict(checkpoint.load_checkpoint(saved[0]))
    assert resumed.step == 5 and len(resumed.history) == 5
    resumed.run()
    assert resumed.step == 10
    for k in WIDTHS:
        assert torch.allclose(resumed.params[k].detach(), straight.params[k].detach(), atol=1e-6)
    assert resumed.optimizer.state[resumed.params["clip_l"]]["step"] == 10
    assert [r.loss for r in resumed.history] == pytest.approx([r.loss for r in straight.history], rel=1e-6)


def test_resume_with_other_settings_is_refused(tmp_path):
    a, _ = make(steps=2)
    a.run()
    b, _ = make(method="ti", steps=2)
    with pytest.raises(TrainingError, match="method='dti'"):
        b.load_state_dict(a.state_dict())


def test_sampler_crops_flips_and_covers_every_image_per_epoch():
    ex = examples(n=4)
    s = BatchSampler(ex, batch_size=2, crop_size=(6, 6), downscale=8, random_crop=True, flip=False, seed=3)
    seen = []
    for _ in range(2):
        b = s.next()
        assert b.latents.shape == (2, 4, 6, 6)
        assert b.target_size == (48, 48)
        assert all(t % 8 == 0 and l_ % 8 == 0 for t, l_ in b.crops)
        for lat in b.latents:
            seen.extend(i for i, e in enumerate(ex) if any(
                torch.equal(lat, e.latent[:, t:t + 6, l_:l_ + 6]) for t in range(3) for l_ in range(5)))
    assert sorted(seen) == [0, 1, 2, 3]
    center = BatchSampler(ex[:1], batch_size=1, crop_size=(6, 6), downscale=8)
    b = center.next()
    assert b.crops == [(8, 16)] and torch.equal(b.latents[0], ex[0].latent[:, 1:7, 2:8])


def test_captions_override_templates():
    ex = examples(n=1)
    ex[0].caption = "a sketch of {} on a table"
    s = BatchSampler(ex, batch_size=3, crop_size=(6, 6), downscale=8)
    assert s.next().prompts == ["a sketch of {} on a table"] * 3


@pytest.mark.parametrize("cfg, match", [
    (dict(method="lora"), "unknown method"),
    (dict(steps=0), "steps"),
    (dict(lr=0.0), "learning rate"),
    (dict(lr=3.0), "angle per step"),
    (dict(kappa=-1.0), "kappa"),
    (dict(grad_accum=0), "accumulation"),
])
def test_bad_config_is_refused(cfg, match):
    with pytest.raises(InputError, match=match):
        config(**cfg).check()


def test_bad_data_and_initializers():
    with pytest.raises(TrainingError, match="no training images"):
        BatchSampler([], batch_size=1, crop_size=(4, 4), downscale=8)
    with pytest.raises(TrainingError, match="smaller than"):
        BatchSampler(examples(size=4), batch_size=1, crop_size=(6, 6), downscale=8)
    tr_text = ToyText()
    sampler = BatchSampler(examples(), batch_size=1, crop_size=(6, 6), downscale=8)
    with pytest.raises(InputError, match="initializer is empty"):
        Trainer(tr_text, ToyDenoise(torch.zeros(8)), sampler, config(initializer="  "))
    with pytest.raises(InputError, match="2 sub-tokens but only 1"):
        Trainer(tr_text, ToyDenoise(torch.zeros(8)), sampler, config(vectors=1, initializer="big dog"))
    with pytest.raises(InputError, match="tokenizes to nothing for clip_l"):
        Trainer(tr_text, ToyDenoise(torch.zeros(8)), sampler, config(initializer="<nothing>"))
    t = Trainer(tr_text, ToyDenoise(torch.zeros(8)), sampler, config(vectors=3, initializer="dog"))
    assert t.params["clip_l"].shape == (3, 12) and "repeated cyclically" in t.notes[0]


def test_batch_is_a_plain_record():
    b = Batch(latents=torch.zeros(1, 4, 2, 2), prompts=["{}"], original_sizes=[(16, 16)], crops=[(0, 0)], target_size=(16, 16))
    assert b.prompts == ["{}"]
