"""What preview frames cost a training run beyond the sampling itself, printed as a ratio.

    python benchmarks/preview_overhead.py                 # CPU, tiny SDXL
    python benchmarks/preview_overhead.py --every 5 --steps 40

overhead_ratio = (training time with previews − the preview sampling time itself) ÷ (training time
without previews), same seed and settings. 1.00 means rendering frames adds nothing but the frames:
no slower steps afterwards (e.g. from models reloaded in another state). Both wall time and process
CPU time are printed, on one thread: on a shared machine the CPU-time ratio is the one to trust. It
also checks that both runs learn bit-identical vectors. Run it with ComfyUI's Python (COMFYUI_PATH
or ~/comfy/ComfyUI).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
import tiny_comfy  # noqa: E402


def load_pack():
    root = tiny_comfy.find_comfyui()
    if root is None:
        sys.exit("benchmark needs ComfyUI: set COMFYUI_PATH or unpack it into ~/comfy/ComfyUI")
    tiny_comfy.import_comfy(root, cpu=True)
    import nodes

    if not asyncio.run(nodes.load_custom_node(str(ROOT))):
        sys.exit("the pack failed to load in ComfyUI")
    pack = sys.modules[str(ROOT).replace(".", "_x_")]
    return lambda name: importlib.import_module(f"{pack.__name__}.{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    mod = load_pack()
    session, settings_mod, preview = mod("adapters.session"), mod("dti.settings"), mod("adapters.preview")
    sampling_cpu = [0.0]
    render = preview.Previews.render

    def timed_render(self, *args, **kwargs):  # the sampling's CPU time, as Previews.seconds is its wall time
        started = time.process_time()
        try:
            return render(self, *args, **kwargs)
        finally:
            sampling_cpu[0] += time.process_time() - started

    preview.Previews.render = timed_render
    import folder_paths

    folder_paths.add_model_folder_path("embeddings", str(Path(folder_paths.get_temp_directory()) / "bench_emb"), is_default=True)
    with torch.inference_mode():
        model, clip, vae = tiny_comfy.build_model("sdxl"), tiny_comfy.build_clip("sdxl"), tiny_comfy.build_vae()
        images = tiny_comfy.random_images(4, 64, 3)
    base = settings_mod.TrainSettings(name="bench_preview", steps=args.steps, batch_size=2, resolution=64, save=False)
    on = replace(base, preview_every=args.every, preview_width=64, preview_height=64, preview_steps=10,
                 preview_sampler="euler", preview_scheduler="normal", preview_cfg=5.0)
    rows = []
    for _ in range(args.repeats):
        for label, s in (("off", base), ("on", on)):
            sampling_cpu[0] = 0.0
            started, started_cpu = time.perf_counter(), time.process_time()
            result = session.train_concept(model, clip, vae, images, s, prompt="a photo of {} on a beach")
            seconds, cpu = time.perf_counter() - started, time.process_time() - started_cpu
            sampling = result.previews.seconds if result.previews is not None else 0.0
            frames = len(result.previews.frames) if result.previews is not None else 0
            rows.append((label, seconds, sampling, frames, result.concept.vectors(), cpu, sampling_cpu[0]))
    off = [r for r in rows if r[0] == "off"]
    on_rows = [r for r in rows if r[0] == "on"]
    same = all(torch.equal(a[4][k], b[4][k]) for a in off for b in on_rows for k in a[4])
    t_off = statistics.median(r[1] for r in off)
    t_on = statistics.median(r[1] for r in on_rows)
    t_sampling = statistics.median(r[2] for r in on_rows)
    print(f"tiny SDXL on CPU, {args.steps} steps, a frame every {args.every} steps ({on_rows[0][3]} frames, "
          f"10 sampling steps at 64 px), median of {args.repeats}")
    print(f"training without previews: {t_off:.2f} s")
    print(f"training with previews:    {t_on:.2f} s, of which preview sampling {t_sampling:.2f} s")
    print(f"overhead_ratio (wall) = (with - sampling) / without = {(t_on - t_sampling) / t_off:.3f}")
    c_off = statistics.median(r[5] for r in off)
    c_on = statistics.median(r[5] for r in on_rows)
    c_sampling = statistics.median(r[6] for r in on_rows)
    print(f"CPU time: without {c_off:.2f} s, with {c_on:.2f} s, of which preview sampling {c_sampling:.2f} s")
    print(f"overhead_ratio (CPU time) = (with - sampling) / without = {(c_on - c_sampling) / c_off:.3f}")
    print(f"vectors bit-identical with and without previews: {same}")


if __name__ == "__main__":
    main()
