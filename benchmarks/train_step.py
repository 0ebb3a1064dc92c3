"""Speed and memory of one DTI Train step, printed as figures and ratios measured in one run.

    python benchmarks/train_step.py                  # CPU, tiny SDXL: overhead ratio, s/step, peak RSS
    python benchmarks/train_step.py --family lumina2 # CPU, tiny Lumina 2 (Gemma-2)
    python benchmarks/train_step.py --family flux    # CPU, tiny Flux.1 dev (CLIP-L + T5, 256-token T5 sequence)
    python benchmarks/train_step.py --family sd3     # CPU, tiny SD3.5 (CLIP-L + CLIP-G + a 4096-wide T5)
    python benchmarks/train_step.py --device cuda    # GPU, full-size SDXL shapes, random weights (also
                                                     # --family sana|flux|sd3: SANA 1.6B, Flux.1 dev, SD3.5 Large)
    python benchmarks/train_step.py --round          # the GPU round (benchmarks/gpu_round.sh): SDXL, Flux.1, SANA, SD3.5
    python benchmarks/train_step.py --round --tiny   # the same code path with tiny shapes on the CPU (dry run)

overhead_ratio = (DTI Train step: the pack's text side + denoise side + optimizer, exactly as the
node runs it) ÷ (a bare forward + backward of the same modules: precomputed token embeddings with
the concept rows written in, the text transformers, the UNet, an MSE, no ComfyUI plumbing).
backward_over_forward = the bare step's backward time ÷ its forward time. `loaded` is how ComfyUI's
memory manager loaded the models for the step, beside the pack's estimate of the step's memory.
Run it with ComfyUI's Python (COMFYUI_PATH or ~/comfy/ComfyUI is found as the tests find it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
import tiny_comfy  # noqa: E402


def load_pack(device: str):
    root = tiny_comfy.find_comfyui()
    if root is None:
        sys.exit("benchmark needs ComfyUI: set COMFYUI_PATH or unpack it into ~/comfy/ComfyUI")
    tiny_comfy.import_comfy(root, cpu=(device == "cpu"))
    import nodes

    if not asyncio.run(nodes.load_custom_node(str(ROOT))):
        sys.exit("the pack failed to load in ComfyUI")
    pack = sys.modules[str(ROOT).replace(".", "_x_")]
    return lambda name: importlib.import_module(f"{pack.__name__}.{name}")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class BareStep:
    """The same modules with no plumbing: fixed token embeddings, rows written in, forward, backward."""

    def __init__(self, mod, text, patcher, family, batch, rows):
        self.patcher, self.family, self.batch = patcher, family, batch
        self.base = patcher.model
        self.sampling = patcher.get_model_object("model_sampling")
        prepared = [text.prepare(p) for p in batch.prompts]
        self.encoders = []
        if family.name == "sana":
            self._init_sana(text, prepared)
            return
        clip_text = mod("adapters.clip_text")
        for sub in family.encoders:
            enc = text.subs[sub.key]
            key = clip_text.token_key(text.clip, family.tokenizer_attr(sub.key))
            ids, slots, num_tokens = [], [], []
            for b, p in enumerate(prepared):
                row = p.tokens[key][0]
                ids.append([t if isinstance(t, int) else 0 for t, _w in row])
                slots += [(b, i, t.index) for i, (t, _w) in enumerate(row) if isinstance(t, clip_text._Slot)]
                end = enc.special_tokens.get("end")
                first_end = next((i for i, (t, _w) in enumerate(row) if t == end), len(row) - 1)
                num_tokens.append(first_end + 1)
            device = enc.transformer.get_input_embeddings().weight.device
            with torch.no_grad():
                base_emb = enc.transformer.get_input_embeddings()(torch.tensor(ids, device=device), out_dtype=torch.float32)
            self.encoders.append((sub.key, enc, base_emb, slots, num_tokens))

    def _init_sana(self, text, prepared):
        model = text.model
        device = next(model.parameters()).device
        ids = torch.tensor([p.ids for p in prepared], device=device)
        self.sana_mask = torch.tensor([p.mask for p in prepared], device=device)
        embed = model.get_input_embeddings()
        with torch.no_grad():
            self.sana_emb = embed(ids).float()
        self.sana_scale = float(getattr(embed, "embed_scale", torch.tensor(1.0)))
        self.sana_slots = [(b, pos, r) for b, p in enumerate(prepared) for pos, r in p.slots]
        self.sana_model = model

    def _text_sana(self, rows):
        emb = self.sana_emb.clone()
        b, i, r = zip(*self.sana_slots)
        emb[list(b), list(i)] = rows["gemma"][list(r)] * self.sana_scale
        hidden = self.sana_model(inputs_embeds=emb.to(self.sana_model.dtype), attention_mask=self.sana_mask)[0]
        select = [0] + list(range(-299, 0))
        embs = hidden[:, None][:, :, select] * self.sana_mask[:, select].unsqueeze(-1).to(hidden.dtype)[:, None]
        return embs, None

    def __call__(self, rows, generator):
        if self.family.name == "sana":
            return self._denoise(*self._text_sana(rows), generator)
        contexts, pools = [], []
        for key, enc, base_emb, slots, num_tokens in self.encoders:
            emb = base_emb.clone()
            b, i, r = zip(*slots)
            emb[list(b), list(i)] = rows[key][list(r)]
            out = enc.transformer(None, None, embeds=emb, num_tokens=num_tokens, intermediate_output=enc.layer_idx,
                                  final_layer_norm_intermediate=enc.layer_norm_hidden_state, dtype=torch.float32)
            contexts.append(out[1] if enc.layer == "hidden" else out[0])
            pooled = None
            if len(out) > 2:
                pooled = out[3] if not enc.return_projected_pooled and len(out) > 3 and out[3] is not None else out[2]
            pools.append(pooled)
        if self.family.combine == "flux":
            return self._denoise(contexts[1], pools[0], generator)
        if self.family.combine == "sd3":
            lg = torch.cat(contexts[:2], dim=-1)
            lg = torch.nn.functional.pad(lg, (0, contexts[2].shape[-1] - lg.shape[-1]))
            return self._denoise(torch.cat([lg, contexts[2]], dim=1), torch.cat(pools[:2], dim=-1), generator)
        context = torch.cat(contexts, dim=-1) if len(contexts) > 1 else contexts[0]
        return self._denoise(context, pools[-1], generator)

    def _denoise(self, context, pooled, generator):
        device = self.patcher.load_device
        x0 = self.batch.latents.to(device)
        n = x0.shape[0]
        sigma = torch.full((n,), float(self.sampling.percent_to_sigma(0.5)), device=device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        x_t = self.sampling.noise_scaling(sigma, noise.clone(), x0)
        dtype = self.base.manual_cast_dtype or self.base.get_dtype()
        kwargs = {}
        if self.family.name == "sdxl":
            th, tw = self.batch.target_size
            kwargs["y"] = self.base.encode_adm(pooled_output=pooled, width=tw, height=th, target_width=tw,
                                               target_height=th, device=device).to(device, dtype)
        elif self.family.name == "lumina2":
            kwargs["num_tokens"] = context.shape[1]
        elif self.family.name in ("flux", "sd3"):
            kwargs["y"] = pooled.to(device, dtype)
            if self.family.guidance is not None and self.base.diffusion_model.params.guidance_embed:
                kwargs["guidance"] = torch.full((n,), self.family.guidance, device=device)
        xc = self.sampling.calculate_input(sigma, x_t).to(dtype)
        out = self.base.diffusion_model(xc, self.sampling.timestep(sigma).float(), context=context.to(device, dtype), **kwargs)
        flow = "CONST" in [c.__name__ for c in type(self.sampling).__mro__]  # flow target ε − x₀ (Flux, SD3)
        return ((out.float() - (noise - x0 if flow else noise)) ** 2).mean()


def measure(device, mod, model, clip, family_name, resolution, batch_size, steps, warmup, checkpointing, precision):
    """Median seconds of (DTI step, bare step, bare forward, bare backward), peak GPU GiB, and the load line."""
    session, tr, denoise = mod("adapters.session"), mod("dti.trainer"), mod("adapters.denoise")
    encoder = mod("adapters.text_encoder").text_encoder(clip)
    family = encoder.family
    down = 32 if family_name == "sana" else 8  # SANA's DC-AE downscales 32×, the others 8×
    g = torch.Generator().manual_seed(0)
    h = resolution // down
    examples = [tr.LatentExample(latent=torch.randn(model.model.latent_format.latent_channels, h, h, generator=g),
                                 original_size=(resolution, resolution)) for _ in range(max(batch_size, 2))]
    with torch.inference_mode(False), torch.enable_grad():
        # Gemma prompts differ in length and SANA batches one prompt per forward: time one template,
        # so the bare baseline can batch exactly the same sequences.
        templates = tr.OBJECT_TEMPLATES if family.name == "sdxl" else tr.OBJECT_TEMPLATES[:1]
        shape = (resolution, batch_size, down)
        with session.training_models(model, encoder, precision, checkpointing, shape) as patcher, encoder.text_side("bench") as text:
            den = denoise.ModelDenoiseSide(patcher, patcher.load_device, identical_prompt_batches=family.identical_prompt_batches,
                                           guidance=family.guidance)
            sampler = tr.BatchSampler(examples, batch_size, (h, h), down, templates, seed=0)
            settings = mod("dti.settings").TrainSettings(name="bench", initializer="dog", steps=10**6, lr=0.04, kappa=1e-4,
                                                         batch_size=batch_size, grad_accum=1, resolution=resolution)
            trainer = tr.Trainer(text, den, sampler, settings, device=encoder.device)
            bare = BareStep(mod, text, patcher, family, sampler.next(), None)
            leaf = {k: v.detach().clone().requires_grad_(True) for k, v in trainer.rows().items()}
            for _ in range(warmup):
                trainer.train_step()
                bare(leaf, g).backward()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ours, theirs, forward, backward = [], [], [], []
            for _ in range(steps):  # interleaved, so drift hits both alike
                sync(device)
                t0 = time.perf_counter()
                trainer.train_step()
                sync(device)
                t1 = time.perf_counter()
                for v in leaf.values():
                    v.grad = None
                loss = bare(leaf, g)
                sync(device)
                t2 = time.perf_counter()
                loss.backward()
                sync(device)
                t3 = time.perf_counter()
                ours.append(t1 - t0)
                theirs.append(t3 - t1)
                forward.append(t2 - t1)
                backward.append(t3 - t2)
            peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
            loaded = patcher.dti_load
    return (statistics.median(ours), statistics.median(theirs), statistics.median(forward), statistics.median(backward),
            peak_gpu, loaded)


def round_plan(tiny: bool) -> list[tuple[str, str, Callable, list[tuple]]]:
    """The GPU round: (label, family, builder, configs (resolution, batch, checkpointing, precision)), most
    wanted first, since a spent time budget skips the tail. ``tiny``: the same plan with tiny models and
    small resolutions, on the CPU (the dry run)."""
    sana = tiny_comfy.extramodels_path() is not None
    if tiny:
        import tempfile

        def tiny_sana():
            pack = tiny_comfy.load_extramodels(tiny_comfy.extramodels_path())
            return tiny_comfy.build_sana(pack, Path(tempfile.mkdtemp())), tiny_comfy.build_hf_gemma()

        sdxl = lambda: (tiny_comfy.build_model("sdxl"), tiny_comfy.build_clip("sdxl"))  # noqa: E731
        return [("sdxl", "sdxl", sdxl, [(64, 1, False, "auto"), (64, 1, True, "auto"), (48, 4, False, "auto")]),
                ("flux", "flux", lambda: single_models("flux", "cpu"), [(64, 1, True, "auto"), (64, 1, False, "auto")]),
                *([("sana", "sana", tiny_sana, [(64, 2, True, "auto")])] if sana else []),
                ("sdxl, text encoder on the CPU", "sdxl", sdxl, [(64, 1, True, "auto")]),
                ("sd3", "sd3", lambda: single_models("sd3", "cpu"), [(64, 1, True, "auto")])]
    return [
        ("sdxl", "sdxl", lambda: tiny_comfy.build_full_sdxl("cuda"),
         [(1024, 1, False, "bf16"), (1024, 1, True, "bf16"), (768, 4, False, "bf16"), (768, 4, True, "bf16")]),
        # Flux.1 dev + T5-XXL at 1024² batch 1: the step 24 GB cards are meant to hold (with checkpointing)
        ("flux", "flux", lambda: tiny_comfy.build_full_flux("cuda"), single_configs("flux", "cuda")),
        *([("sana", "sana", lambda: tiny_comfy.build_full_sana("cuda"), single_configs("sana", "cuda"))] if sana else []),
        ("sdxl, text encoder on the CPU", "sdxl", lambda: tiny_comfy.build_full_sdxl("cuda", text_device="cpu"),
         [(1024, 1, True, "bf16")]),
        ("sd3.5 large", "sd3", lambda: tiny_comfy.build_full_sd3("cuda"), single_configs("sd3", "cuda")[:1]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--family", choices=["sdxl", "lumina2", "sana", "flux", "sd3"], default="sdxl")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--round", action="store_true",
                    help="the GPU round's plan (SDXL configs, Flux.1, SANA, SDXL's text encoder on the CPU, SD3.5)")
    ap.add_argument("--tiny", action="store_true", help="with --round: tiny shapes on the CPU, to dry-run the round")
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="skip what would start after this many seconds (0: no limit), so a timed round ends by itself")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each figure survives a round cut short by its timeout
    start = time.monotonic()
    spent = lambda: args.budget_s > 0 and time.monotonic() - start > args.budget_s  # noqa: E731
    torch.set_num_threads(args.threads)
    device = "cpu" if args.tiny else ("cuda" if args.round else args.device)
    mod = load_pack(device)
    if args.round:
        plan = round_plan(args.tiny)
    else:
        plan = [(args.family, args.family, lambda: single_models(args.family, args.device), single_configs(args.family, args.device))]
    print(f"# DTI Train step, device {device}, torch {torch.__version__}, threads {args.threads}")
    failed = []
    for label, family, build, configs in plan:
        if spent():
            print(f"[{label}] skipped: the {args.budget_s:.0f} s time budget is spent")
            continue
        before = torch.cuda.memory_allocated() / 2**30 if device == "cuda" else 0.0
        t0 = time.perf_counter()
        with torch.inference_mode():
            model, clip = build()
        print(f"# [{label}] built in {time.perf_counter() - t0:.1f} s"
              + (f", {before:.2f} GiB still allocated from earlier models" if device == "cuda" else ""))
        for resolution, batch, checkpointing, precision in configs:
            if spent():
                print(f"[{label}] resolution={resolution} batch={batch} checkpointing={checkpointing}: skipped, "
                      f"the {args.budget_s:.0f} s time budget is spent")
                continue
            if not report(label, mod, model, clip, family, resolution, batch, checkpointing, precision, args.steps,
                          args.warmup, device):
                failed.append(f"[{label}] resolution={resolution} batch={batch} checkpointing={checkpointing}")
        del model, clip
        gc.collect()  # ComfyUI's models hold reference cycles: free their GPU weights before the next build
        if device == "cuda":
            torch.cuda.empty_cache()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak_rss_mib={rss:.0f}")
    if failed:
        sys.exit(f"{len(failed)} configuration(s) failed: {'; '.join(failed)}")


def single_models(family: str, device: str):
    if family == "sana" and tiny_comfy.extramodels_path() is None:
        sys.exit("the SANA path needs ComfyUI_ExtraModels in ComfyUI/custom_nodes")
    if device == "cpu":
        if family == "sdxl":
            return tiny_comfy.build_model("sdxl"), tiny_comfy.build_clip("sdxl")
        if family == "lumina2":
            return tiny_comfy.build_lumina2_model(), tiny_comfy.build_gemma_clip()
        if family in ("flux", "sd3"):
            return tiny_comfy.build_t5_model(family), tiny_comfy.build_t5_clip(family)
        import tempfile

        pack = tiny_comfy.load_extramodels(tiny_comfy.extramodels_path())
        return tiny_comfy.build_sana(pack, Path(tempfile.mkdtemp())), tiny_comfy.build_hf_gemma()
    builders = {"sdxl": tiny_comfy.build_full_sdxl, "sana": tiny_comfy.build_full_sana, "flux": tiny_comfy.build_full_flux,
                "sd3": tiny_comfy.build_full_sd3}
    if family not in builders:
        sys.exit(f"no full-size GPU shapes for {family!r}: choose one of {', '.join(builders)}")
    return builders[family]("cuda")


def single_configs(family: str, device: str) -> list[tuple]:
    if device == "cpu":
        if family in ("flux", "sd3"):
            return [(64, 2, False, "auto"), (128, 4, False, "auto")]
        return [(128, 4, False, "auto")] if family == "sdxl" else [(64, 2, False, "auto")]
    if family == "sdxl":
        return [(1024, 1, False, "bf16"), (1024, 1, True, "bf16"), (768, 4, False, "bf16"), (768, 4, True, "bf16")]
    if family in ("flux", "sd3"):  # checkpointed first: the 24 GB-card configuration
        return [(1024, 1, True, "bf16"), (1024, 1, False, "bf16")]
    return [(1024, 2, False, "bf16"), (1024, 2, True, "bf16")]


def report(label, mod, model, clip, family, resolution, batch, checkpointing, precision, steps, warmup, device) -> bool:
    """Print one configuration's figures; False when it failed (printed with its traceback, so the
    rest of a scarce GPU round still runs)."""
    head = f"[{label}] resolution={resolution} batch={batch} precision={precision} checkpointing={checkpointing}"
    try:
        ours, bare, fwd, bwd, peak, loaded = measure(device, mod, model, clip, family, resolution, batch, steps, warmup,
                                                     checkpointing, precision)
    except torch.cuda.OutOfMemoryError as e:
        print(f"{head}: out of memory ({e})")
        torch.cuda.empty_cache()
        return True  # a figure in itself, not a failure of the code path
    except Exception as e:  # noqa: BLE001 — any failure is reported; main() exits non-zero at the end
        traceback.print_exc(file=sys.stdout)
        print(f"{head}: FAILED: {type(e).__name__}: {e}")
        return False
    line = (f"{head} s_per_step={ours:.4f} it_per_s={1 / ours:.2f} bare_s_per_step={bare:.4f} "
            f"overhead_ratio={ours / bare:.3f} backward_over_forward={bwd / fwd:.2f}")
    if peak is not None:
        line += f" peak_gpu_gib={peak:.2f}"
    print(line)
    print(f"    loaded: {loaded}")
    return True


if __name__ == "__main__":
    main()
