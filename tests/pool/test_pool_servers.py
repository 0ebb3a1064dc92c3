"""The pool client against two real ComfyUI servers on loopback (tiny SD1 models, few steps).

Each server is ComfyUI's own main.py in a temporary base directory (input, output, temp,
models/embeddings) with the pack and the test-only tiny-model loader in custom_nodes; the pool
client talks to them over HTTP and the websocket only. Skipped when no ComfyUI workspace is found.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
import tiny_comfy  # noqa: E402
from servers import PoolServer, make_workspace  # noqa: E402

from tools.dti_pool import results  # noqa: E402
from tools.dti_pool.comfy_http import ComfyClient  # noqa: E402
from tools.dti_pool.graph import TRAIN_CLASS, GraphError  # noqa: E402
from tools.dti_pool.manifest import load_manifest  # noqa: E402
from tools.dti_pool.scheduler import Pool  # noqa: E402

COMFY = tiny_comfy.find_comfyui()
pytestmark = [
    pytest.mark.skipif(COMFY is None, reason=tiny_comfy.SKIP_REASON),
    pytest.mark.skipif(importlib.util.find_spec("aiohttp") is None or importlib.util.find_spec("torch") is None,
                       reason="this Python cannot run ComfyUI (no torch/aiohttp); run the suite with bash tests/run.sh"),
]

STEPS = 30


@pytest.fixture(scope="module")
def servers():
    """Two ComfyUI servers, started side by side."""
    pair = [PoolServer(COMFY, python=sys.executable), PoolServer(COMFY, python=sys.executable)]
    errors = []

    def start(s):
        try:
            s.start()
        except Exception as e:  # reported below, with the server's log
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in pair]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for s in pair:
            s.stop()
        raise errors[0]
    yield pair
    for s in pair:
        s.stop()


def _train_prompts(server: PoolServer) -> int:
    history = ComfyClient(server.url).get_json("/history")
    return sum(any(n["class_type"] == TRAIN_CLASS for n in h["prompt"][2].values()) for h in history.values())


def _leftovers(server: PoolServer) -> list[Path]:
    """Files the pool must not leave: staged images, half-written concepts, temp files."""
    staged = server.files("input/dti_pool")
    partial = [p for p in server.base.rglob(".dti-*")] + [p for p in server.base.rglob("*.part")]
    return staged + partial + server.files("temp")


def test_unknown_setting_is_refused_before_anything_is_submitted(servers, tmp_path):
    manifest = load_manifest(make_workspace(tmp_path, {"cat": "cat"}, ["dti"], STEPS, extra="stepz = 5"))
    before = [_train_prompts(s) for s in servers]
    with pytest.raises(GraphError) as err:
        Pool(manifest, [s.url for s in servers], tmp_path / "out", log=lambda _: None).run()
    text = str(err.value)
    assert "unknown setting 'stepz'" in text and "Valid settings:" in text and "steps" in text.split("Valid settings:")[1]
    assert [_train_prompts(s) for s in servers] == before
    assert all(ComfyClient(s.url).queue_length() == 0 for s in servers)


def test_a_job_failing_for_its_own_reasons_is_reported_and_does_not_block_the_others(servers, tmp_path):
    path = make_workspace(tmp_path, {"good": "cat", "broken": "dog"}, ["dti"], STEPS)
    (tmp_path / "broken" / "1.png").write_bytes(b"this is not a PNG")
    lines: list[str] = []
    rows = Pool(load_manifest(path), [s.url for s in servers], tmp_path / "out", poll_s=0.5, log=lines.append).run()
    by_subject = {r["subject"]: r for r in rows}
    assert by_subject["good"]["status"] == "done" and by_subject["good"]["steps"] == STEPS
    bad = by_subject["broken"]
    assert bad["status"] == "failed" and bad["attempts"] == 1  # not resubmitted: the images are at fault
    assert "LoadImageSetFromFolderNode" in bad["error"] and "cannot identify image file" in bad["error"]
    table = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["subject"]: r["status"] for r in table} == {"good": "done", "broken": "failed"}
    assert not any(_leftovers(s) for s in servers), [_leftovers(s) for s in servers]


def test_ctrl_c_withdraws_only_this_runs_prompts_and_cleans_up(servers, tmp_path):
    path = make_workspace(tmp_path, {"cat": "cat", "dog": "dog"}, ["dti", "ti"], 400)
    first = servers[0]
    # Another client's prompt waits on the first server: cancelling must leave it alone.
    other = ComfyClient(first.url)
    foreign = make_workspace(tmp_path / "other", {"other": "cat"}, ["dti"], 3)
    seen: list[str] = []

    def ctrl_c(slot, msg):
        if msg.get("type") == "progress" and msg["data"].get("value", 0) >= 1:
            if not seen:
                seen.append(msg["data"]["prompt_id"])
                foreign_prompt = json.loads((foreign.parent / "tiny_graph.json").read_text())
                for node in foreign_prompt.values():
                    node.pop("_meta", None)
                    for k, v in node["inputs"].items():
                        if isinstance(v, str):
                            node["inputs"][k] = {"{{job_name}}": "foreign", "{{image_folder}}": "dti_pool/foreign"}.get(v, v)
                    if node["class_type"] == TRAIN_CLASS:
                        node["inputs"].update(steps=3, resolution=64)
                    if node["class_type"] == "DTITrainOptions":
                        node["inputs"].update(batch_size=2)
                for png in sorted((foreign.parent / "other").glob("*.png")):
                    other.upload_image(png, "dti_pool/foreign")
                other.submit(foreign_prompt, "foreign-prompt", "someone-else")
                raise KeyboardInterrupt

    pool = Pool(load_manifest(path), [s.url for s in servers], tmp_path / "out", poll_s=0.5, log=lambda _: None, observer=ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        pool.run()
    ours = [pid for slot in pool.slots for pid in slot.abandoned] + seen
    assert seen
    for s in servers:
        running, pending = ComfyClient(s.url).queue()
        assert not set(running + pending) & set(ours)
    interrupted = ComfyClient(servers[0].url if seen[0] in ComfyClient(servers[0].url).get_json("/history") else servers[1].url)
    status = interrupted.history(seen[0])["status"]
    assert any(m[0] == "execution_interrupted" for m in status["messages"])
    table = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(table) == 4 and {r["status"] for r in table} == {"cancelled"}
    # The other client's prompt was neither deleted nor interrupted: it runs to the end.
    deadline = time.monotonic() + 60
    while other.history("foreign-prompt") is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert other.history("foreign-prompt")["status"]["status_str"] == "success"
    other.submit({"1": {"class_type": "DTIPoolCleanup", "inputs": {"folder": "dti_pool/foreign"}}}, "foreign-cleanup", "x")
    while other.history("foreign-cleanup") is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_leftovers(s) for s in servers), [_leftovers(s) for s in servers]


def test_killed_server_jobs_finish_elsewhere_exactly_once_and_a_rerun_skips_them(servers, tmp_path):
    import torch

    from dti import formats

    first, second = servers
    path = make_workspace(tmp_path, {"cat": "cat", "dog": "dog", "car": "car"}, ["dti", "ti"], STEPS)
    manifest = load_manifest(path)
    names = {j.name for j in manifest.jobs}
    assert len(names) == 6
    out = tmp_path / "out"
    killed: list[str] = []

    def kill_second_mid_job(slot, msg):
        # The first training step reported by the second server: kill it there, mid-job (a crash).
        if not killed and slot.url == second.url and msg.get("type") == "progress" and msg["data"].get("value", 0) >= 1:
            killed.append(msg["data"]["prompt_id"])
            second.kill()

    lines: list[str] = []
    earlier = {s.url: {p.stem for p in s.files("models/embeddings")} for s in servers}  # from the other tests
    rows = Pool(manifest, [first.url, second.url], out, poll_s=0.5, log=lines.append, observer=kill_second_mid_job).run()
    assert killed, "the second server never started a job"
    assert any("went away" in line for line in lines)

    # Every job completed exactly once, the table is complete.
    assert sorted(r["job"] for r in rows) == sorted(names) and all(r["status"] == "done" for r in rows)
    assert {(r["subject"], r["method"]) for r in rows} == {(j.subject, j.method) for j in manifest.jobs}
    moved = [r for r in rows if r["attempts"] == 2]
    assert moved and all(r["server"] == first.url for r in moved)
    table = json.loads((out / "results.json").read_text())
    assert sorted(r["job"] for r in table) == sorted(names)
    assert (out / "results.csv").read_text().count("\n") == 7 and (out / "contact_sheet.png").is_file()
    saved = {s.url: {p.stem for p in s.files("models/embeddings")} - earlier[s.url] for s in servers}
    assert saved[first.url] | saved[second.url] == names and not saved[first.url] & saved[second.url]

    # Correct files: the bytes the server saved, and DTI rows at m*.
    for row in rows:
        local = out / row["file"]
        server = first if row["server"] == first.url else second
        exported = server.base / "output" / "dti_pool" / f"{row['job']}.safetensors"
        assert results.sha256_bytes(local.read_bytes()) == row["sha256"] == results.sha256_bytes(exported.read_bytes())
        # The same concept DTI Train saved in the embeddings folder (safetensors orders metadata keys freely,
        # so compare contents, not bytes).
        loaded = formats.load_embedding(local)
        trained = formats.load_embedding(server.base / "models" / "embeddings" / f"{row['job']}.safetensors")
        assert loaded.metadata == trained.metadata
        assert all(torch.equal(loaded.vectors[k], trained.vectors[k]) for k in trained.vectors)
        assert loaded.facts["method"] == row["method"]
        for key, rows_ in loaded.vectors.items():
            m_star = loaded.facts["info"]["m_star"][key]  # the encoder's vocabulary m*, recorded for every method
            norms = rows_.double().norm(dim=-1)
            if row["method"] == "dti":
                assert float((norms - m_star).abs().max()) < 1e-5
            else:
                assert float((norms - m_star).abs().max()) > 1e-3  # plain TI drifts off m*
        assert row["steps"] == STEPS and row["final_loss"] > 0 and row["s_per_step"] > 0
    assert not _leftovers(first), _leftovers(first)
    assert second.files("input/dti_pool"), "the killed server should still hold the staged images of its jobs"

    # The crashed server comes back; a re-run skips every job and clears what the crash left there.
    trained = [_train_prompts(first)]
    second.start()
    lines.clear()
    again = Pool(load_manifest(path), [first.url, second.url], out, poll_s=0.5, log=lines.append).run()
    assert sorted(r["job"] for r in again) == sorted(names)
    assert sum(line.startswith("skip ") for line in lines) == 6
    assert [_train_prompts(first), _train_prompts(second)] == [trained[0], 0]
    assert not _leftovers(first) and not _leftovers(second), (_leftovers(first), _leftovers(second))
    assert not json.loads((out / results.STATE_FILE).read_text()).get("stale_staging")
