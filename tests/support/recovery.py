"""Hidden-direction recovery: a teacher conditioned on a hidden unit direction at m*, a student
trained with DTI from the initializer to match the teacher's prediction (shared by tests)."""

from __future__ import annotations

import dataclasses

import torch
from comfy_harness import submodule
from tiny_comfy import random_images


def make_teacher(pack, patcher, device, text, hidden_rows, identical_prompt_batches=False):
    denoise = submodule(pack, "adapters.denoise")

    class TeacherDenoise(denoise.ModelDenoiseSide):
        def loss(self, batch, cond, generator):
            x0 = batch.latents.to(self.device, torch.float32)
            sigma = self.sample_sigmas(x0.shape[0], generator).to(self.device)
            noise = torch.randn(x0.shape, generator=generator).to(self.device)
            x_t = self.sampling.noise_scaling(sigma, noise.clone(), x0)
            s = sigma.view(-1, 1, 1, 1)
            with torch.no_grad():
                teacher_cond = text.encode(batch.prompts, hidden_rows)
                target = (x_t - self.denoise(batch, teacher_cond, x_t, sigma)) / s
            pred = (x_t - self.denoise(batch, cond, x_t, sigma)) / s
            return ((pred - target) ** 2).mean()

    return TeacherDenoise(patcher, device, identical_prompt_batches=identical_prompt_batches)


def run_recovery(pack, objects, steps, seed=0, batch=4, size=128, lr=0.04, templates=4, bare_prompt=False,
                 initializer="dog"):
    """Cosine of the trained direction to the hidden one, per encoder: (start, end)."""
    session = submodule(pack, "adapters.session")
    encoders = submodule(pack, "adapters.text_encoder")
    images_mod = submodule(pack, "adapters.images")
    tr = submodule(pack, "dti.trainer")
    model, clip, vae = objects
    encoder = encoders.text_encoder(clip)
    with torch.inference_mode(False), torch.enable_grad():
        examples, crop, down = images_mod.prepare_examples(
            images_mod.flatten_images(random_images(4, size, seed=seed)), vae, model, size, "resize and crop", False, [None] * 4)
        if bare_prompt:
            # The concept alone: no Lumina 2 system prompt, no SANA instruction around it
            encoder.family = dataclasses.replace(encoder.family, prompt_wrapper="{}")
            if hasattr(encoder, "instruction"):
                encoder.instruction = ""
        prompts = ("{}",) if bare_prompt else tr.OBJECT_TEMPLATES[:templates]
        with session.training_models(model, encoder) as patcher, encoder.text_side("hidden") as text:
            sampler = tr.BatchSampler(examples, batch, crop, down, prompts, seed=seed)
            config = submodule(pack, "dti.settings").TrainSettings(
                name="hidden", initializer=initializer, steps=steps, lr=lr, kappa=0.0, seed=seed, batch_size=batch, grad_accum=1,
                resolution=size)
            placeholder = tr.Trainer(text, None, sampler, config)
            g = torch.Generator().manual_seed(100 + seed)
            hidden = {}
            for key, init in placeholder.inits.items():
                v = torch.randn(init.mu.shape, generator=g)
                hidden[key] = v / v.norm(dim=-1, keepdim=True)
            hidden_rows = {k: placeholder.inits[k].m_star * v for k, v in hidden.items()}
            text.bind_rows({k: v.shape[0] for k, v in hidden.items()})
            teacher = make_teacher(pack, patcher, patcher.load_device, text, hidden_rows, encoder.family.identical_prompt_batches)
            trainer = tr.Trainer(text, teacher, sampler, config)
            start = {k: float((trainer.params[k].detach() * hidden[k]).sum(-1).mean()) for k in hidden}
            trainer.run()
            end = {k: float((trainer.params[k].detach() * hidden[k]).sum(-1).mean()) for k in hidden}
    return start, end
