"""Pool throughput: the same manifest on one ComfyUI server, then on two (jobs per minute, and the ratio).

    ~/comfy/venv/bin/python benchmarks/pool_throughput.py [--subjects 4] [--steps 60]

Starts real ComfyUI servers on loopback (tiny SD1 models, one torch thread each, as one server per
device would be), runs tools.dti_pool against them, prints the manifest, the job table and the numbers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "pool"), str(REPO / "tests" / "support")]

import tiny_comfy  # noqa: E402
from servers import PoolServer, make_workspace  # noqa: E402

from tools.dti_pool.manifest import load_manifest  # noqa: E402
from tools.dti_pool.scheduler import Pool  # noqa: E402

NAMES = ["cat", "dog", "car", "tree", "house", "beach", "city", "street"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    root = tiny_comfy.find_comfyui()
    if root is None:
        sys.exit(tiny_comfy.SKIP_REASON)
    work = Path(tempfile.mkdtemp(prefix="dti-pool-bench-"))
    path = make_workspace(work, {n: n for n in NAMES[: args.subjects]}, ["dti", "ti"], args.steps)
    print(f"manifest ({path}):\n{path.read_text()}")
    servers = [PoolServer(root, python=sys.executable), PoolServer(root, python=sys.executable)]
    threads = [threading.Thread(target=s.start) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        # Warm both servers (first use builds the tiny models): one job each, not timed.
        warm = make_workspace(work / "warm", {"warm_a": "cat", "warm_b": "dog"}, ["dti"], 5)
        Pool(load_manifest(warm), [s.url for s in servers], work / "warm_out", poll_s=0.5, log=lambda _: None).run()
        rates = {}
        for n in (1, 2):
            manifest = load_manifest(path)
            started = time.perf_counter()
            rows = Pool(manifest, [s.url for s in servers[:n]], work / f"out{n}", poll_s=0.5, log=lambda _: None).run()
            seconds = time.perf_counter() - started
            assert all(r["status"] == "done" for r in rows) and len(rows) == len(manifest.jobs)
            rates[n] = len(rows) / seconds * 60
            print(f"\n{n} server(s): {len(rows)} jobs in {seconds:.1f} s = {rates[n]:.1f} jobs/min")
            print((work / f"out{n}" / "results.csv").read_text())
        print(f"two servers / one server: {rates[2] / rates[1]:.2f}x jobs/min")
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    main()
