"""Soak: 20 consecutive trainings in one executor (tiny SDXL, 2 steps each) — memory and time stay flat."""

from __future__ import annotations

import asyncio
import gc
import os
import time
import uuid
from pathlib import Path

from comfy_harness import ServerStub, train_prompt, with_sinks

RUNS = 20


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_twenty_trainings_in_one_executor_keep_memory_and_time_flat(pack, sdxl, embeddings, output):
    import execution

    server = ServerStub()
    executor = execution.PromptExecutor(server, cache_type=False)
    rss, seconds = [], []
    for i in range(RUNS):
        # a new seed per run, so the executor's cache cannot skip the training
        prompt = with_sinks(train_prompt(name="soak", steps=2, training_seed=i, save=i % 2 == 0))
        valid = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))
        assert valid[0] and not valid[3], valid
        started = time.perf_counter()
        executor.execute(prompt, str(uuid.uuid4()), {"client_id": "tests"}, valid[2])
        seconds.append(time.perf_counter() - started)
        assert executor.success, [d for e, d in server.messages if e == "execution_error"]
        gc.collect()
        rss.append(rss_mib())
    growth = rss[-1] - rss[1]  # after the first run: one-time allocations (caches, first-call setup) are done
    early, late = sorted(seconds[1:6])[2], sorted(seconds[-5:])[2]
    print(f"RSS MiB per run: {[round(x, 1) for x in rss]}")
    print(f"seconds per run: {[round(x, 3) for x in seconds]}")
    print(f"RSS growth runs 2→{RUNS}: {growth:.1f} MiB; median time runs 2–6 {early:.3f} s, runs {RUNS - 4}–{RUNS} {late:.3f} s "
          f"(ratio {late / early:.2f})")
    assert growth < 50
    assert late < 2 * early + 0.5
    assert len(list(embeddings.glob("soak*.safetensors"))) == RUNS // 2
