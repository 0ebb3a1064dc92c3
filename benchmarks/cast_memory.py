"""Peak memory of a DTI training step when ComfyUI casts weights on every call, printed as ratios.

    python benchmarks/cast_memory.py              # all configurations, each in a fresh subprocess
    python benchmarks/cast_memory.py --only bf16  # one of them

Full-size SD1.5 with random weights (UNet 859.5 M, CLIP-L 123.7 M, built through ComfyUI's classes
by tests/support/fullsize.py), CPU, 256², batch 1, random latents (no VAE). Each configuration runs
the pack's own training path — `training_models`, the CLIP text side, the denoise side, the
optimizer, as benchmarks/train_step.py runs it — for one warm-up step, then reports the peak RSS
(VmHWM, reset after the warm-up) of the next step. Configurations:

  fp32          fp32 storage: ComfyUI casts nothing (the reference)
  bf16_stock    bf16 storage, fp32 compute by ComfyUI's manual cast, cast copies kept for backward
  bf16          the same with the pack's re-cast in backward
  fp8           float8_e4m3fn storage, fp32 compute, re-cast in backward
  lowvram_stock fp32 storage + a rank-8 LoRA on every UNet Linear/Conv, the whole UNet partially
                unloaded (ComfyUI's lowvram path: the LoRA applied in the cast, LowVramPatch), copies kept
  lowvram       the same with the re-cast in backward

The CLIP stays in fp32 in every configuration. Goals: bf16 ≤ 0.75× and fp8 ≤ 0.6× the fp32 peak.
On a CPU-only machine ComfyUI never loads partially by itself (load_models_gpu gives a CPU device
lowvram budget 0 = full load), so the lowvram configurations force it with ComfyUI's own
ModelPatcher.partially_unload; load and offload devices coincide there, so the only cast copies
are the LoRA-patched weights — on a GPU the offloaded layers' device copies add to them.
glibc is told to return large frees to the system (MALLOC_MMAP_THRESHOLD_) so RSS follows live memory.

Measured 2026-11-29 (2 cores shared with other jobs, torch 2.14.1, ComfyUI v0.3.64), peak RSS of a step:

  fp32 5212 MiB (1.000) | bf16_stock 6728 (1.291) | bf16 3574 (0.686) | fp8 2755 (0.529)
  lowvram_stock 8400 (1.612) | lowvram 5246 (1.007)

    python benchmarks/cast_memory.py --overhead   # time cost of re-casting in backward, bf16 storage

--overhead runs bf16 storage in one process and alternates steps with and without the re-cast
(interleaved, so load on the machine hits both alike); it prints the median s/step of each and
their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "benchmarks"))

CONFIGS = {  # name: (UNet storage dtype, manual-cast compute dtype, re-cast in backward, lowvram + LoRA)
    "fp32": ("float32", None, True, False),
    "bf16_stock": ("bfloat16", "float32", False, False),
    "bf16": ("bfloat16", "float32", True, False),
    "fp8": ("float8_e4m3fn", "float32", True, False),
    "lowvram_stock": ("float32", None, False, True),
    "lowvram": ("float32", None, True, True),
}
RESOLUTION = 256
LORA_RANK = 8


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}; this benchmark needs Linux")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)


def add_lora(patcher, rank: int, seed: int = 3) -> int:
    import comfy.ops
    import comfy.weight_adapter

    kinds = (comfy.ops.disable_weight_init.Linear, comfy.ops.disable_weight_init.Conv2d)
    g = torch.Generator().manual_seed(seed)
    patches = {}
    for name, m in patcher.model.diffusion_model.named_modules():
        if isinstance(m, kinds):
            out_dim, in_dim = m.weight.shape[0], m.weight[0].numel()
            up, down = torch.randn(out_dim, rank, generator=g) * 0.01, torch.randn(rank, in_dim, generator=g) / in_dim**0.5
            patches[f"diffusion_model.{name}.weight"] = comfy.weight_adapter.LoRAAdapter(set(), (up, down, float(rank), None, None, None))
    return len(patcher.add_patches(patches, 1.0))


def run_config(name: str, threads: int) -> None:
    """One configuration in this process: prints one `result` line."""
    import fullsize
    from train_step import load_pack

    storage, compute, recast, lowvram = CONFIGS[name]
    torch.set_num_threads(threads)
    mod = load_pack("cpu")
    session, tr, denoise, encoders = (mod(n) for n in ("adapters.session", "dti.trainer", "adapters.denoise", "adapters.text_encoder"))
    started = time.perf_counter()
    with torch.inference_mode():  # what loader nodes hand over
        model = fullsize.build_sd15_unet(getattr(torch, storage), None if compute is None else getattr(torch, compute))
        clip = fullsize.build_sd15_clip()
    if lowvram:
        add_lora(model, LORA_RANK)
    built = time.perf_counter() - started
    if not recast:
        session.recast_in_backward = lambda *modules: contextlib.nullcontext(0)
    encoder = encoders.text_encoder(clip)
    h = RESOLUTION // 8
    g = torch.Generator().manual_seed(0)
    examples = [tr.LatentExample(latent=torch.randn(4, h, h, generator=g), original_size=(RESOLUTION, RESOLUTION)) for _ in range(2)]
    with torch.inference_mode(False), torch.enable_grad():
        with session.training_models(model, encoder) as patcher, encoder.text_side("bench") as text:
            if lowvram:
                patcher.partially_unload(patcher.offload_device, memory_to_free=2 * patcher.model_size())
            den = denoise.ModelDenoiseSide(patcher, patcher.load_device)
            sampler = tr.BatchSampler(examples, 1, (h, h), 8, tr.OBJECT_TEMPLATES, seed=0)
            settings = mod("dti.settings").TrainSettings(name="bench", initializer="dog", steps=10**6, lr=0.04, kappa=1e-4,
                                                         batch_size=1, grad_accum=1, resolution=256)
            trainer = tr.Trainer(text, den, sampler, settings, device=encoder.device)
            trainer.train_step()  # warm-up: optimizer state, caches
            before = status_kib("VmRSS")
            reset_peak_rss()
            t0 = time.perf_counter()
            record = trainer.train_step()
            seconds = time.perf_counter() - t0
            peak = status_kib("VmHWM")
    print(f"result name={name} peak_mib={peak / 1024:.0f} rss_before_step_mib={before / 1024:.0f} "
          f"s_per_step={seconds:.2f} build_s={built:.1f} loss={record.loss:.4g}", flush=True)


def run_overhead(threads: int, pairs: int) -> None:
    """bf16 storage: median step time with / without the re-cast, interleaved in one process."""
    import statistics

    import fullsize
    from train_step import load_pack

    torch.set_num_threads(threads)
    mod = load_pack("cpu")
    session, tr, denoise, encoders, recast = (mod(n) for n in ("adapters.session", "dti.trainer", "adapters.denoise",
                                                               "adapters.text_encoder", "adapters.cast_backward"))
    with torch.inference_mode():
        model = fullsize.build_sd15_unet(torch.bfloat16, torch.float32)
        clip = fullsize.build_sd15_clip()
    session.recast_in_backward = lambda *modules: contextlib.nullcontext(0)  # switched per step below
    encoder = encoders.text_encoder(clip)
    h = RESOLUTION // 8
    g = torch.Generator().manual_seed(0)
    examples = [tr.LatentExample(latent=torch.randn(4, h, h, generator=g), original_size=(RESOLUTION, RESOLUTION)) for _ in range(2)]
    times = {True: [], False: []}
    with torch.inference_mode(False), torch.enable_grad():
        with session.training_models(model, encoder) as patcher, encoder.text_side("bench") as text:
            den = denoise.ModelDenoiseSide(patcher, patcher.load_device)
            sampler = tr.BatchSampler(examples, 1, (h, h), 8, tr.OBJECT_TEMPLATES, seed=0)
            settings = mod("dti.settings").TrainSettings(name="bench", initializer="dog", steps=10**6, lr=0.04, kappa=1e-4,
                                                         batch_size=1, grad_accum=1, resolution=256)
            trainer = tr.Trainer(text, den, sampler, settings, device=encoder.device)
            trainer.train_step()
            for i in range(pairs):
                for on in ((True, False) if i % 2 == 0 else (False, True)):  # neither always goes first
                    with recast.recast_in_backward(patcher.model.diffusion_model, *encoder.modules) if on else contextlib.nullcontext():
                        t0 = time.perf_counter()
                        trainer.train_step()
                        times[on].append(time.perf_counter() - t0)
    with_recast, stock = statistics.median(times[True]), statistics.median(times[False])
    print(f"overhead bf16 s_per_step_recast={with_recast:.2f} s_per_step_stock={stock:.2f} "
          f"recast_overhead_ratio={with_recast / stock:.3f} pairs={pairs} "
          f"all_recast={[round(t, 1) for t in times[True]]} all_stock={[round(t, 1) for t in times[False]]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(CONFIGS), action="append", help="run only these configurations")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overhead", action="store_true", help="time the re-cast instead (bf16 storage, interleaved steps)")
    ap.add_argument("--pairs", type=int, default=3, help="with --overhead: step pairs to time")
    ap.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.overhead:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        run_overhead(args.threads, args.pairs)
        return
    if args.child:
        run_config(args.child, args.threads)
        return
    names = args.only or list(CONFIGS)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    print(f"# DTI training step peak RSS, full-size SD1.5 random weights, CPU, {RESOLUTION}², batch 1, "
          f"torch {torch.__version__}, {args.threads} threads")
    results = {}
    for name in names:  # one at a time, each in a fresh process: peaks never overlap
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--threads", str(args.threads)],
                              env=env, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("result ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{name}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        fields = dict(kv.split("=", 1) for kv in line.split()[1:])
        results[name] = float(fields["peak_mib"])
        ratio = f" ratio_vs_fp32={results[name] / results['fp32']:.3f}" if "fp32" in results else ""
        print(line[len("result "):] + ratio, flush=True)
    if "fp32" in results:
        for name, goal in (("bf16", 0.75), ("fp8", 0.6)):
            if name in results:
                ratio = results[name] / results["fp32"]
                print(f"goal {name} <= {goal}x fp32: {ratio:.3f} {'met' if ratio <= goal else 'NOT met'}")


if __name__ == "__main__":
    main()
