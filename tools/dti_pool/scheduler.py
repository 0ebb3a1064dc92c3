"""The pool: submit each job to the least-loaded server (by its /queue length), follow it over the
websocket (polling /history when the websocket is gone), bring back its concept, and move its work
elsewhere when a server goes away. ComfyUI queues and executes; this only decides where and watches.

Guarantees: a job's result is taken from exactly one prompt (prompts abandoned on a server that went
away are deleted/interrupted there if it answers again, and their results ignored); a job that
fails for its own reasons (the server's execution_error, or every server refusing the prompt) is
reported with the server's text and does not hold up the others; Ctrl-C deletes our queued prompts
and interrupts our running ones, and nobody else's.
"""

from __future__ import annotations

import queue
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import graph as graphs
from . import results
from .comfy_http import ComfyClient, Refused, ServerDown
from .manifest import Job, Manifest
from .websocket import WebSocket, WebSocketClosed

Log = Callable[[str], None]


@dataclass
class Run:
    """One job's life in this run."""

    job: Job
    status: str = "pending"  # pending → submitted → running → done | failed | cancelled; or skipped
    slot: Slot | None = None
    prompt_id: str | None = None
    attempts: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # server → why it would not take the prompt
    step: int = 0
    total: int = 0
    loss: float | None = None
    started: float | None = None
    last_line: float = 0.0
    notes: list[str] = field(default_factory=list)
    row: dict[str, Any] | None = None


class Slot:
    """One server of the pool, with our prompts on it."""

    def __init__(self, url: str, timeout: float) -> None:
        self.client = ComfyClient(url, timeout=timeout)
        self.url = self.client.url
        self.alive = False
        self.usable = True  # False when it lacks the graph's nodes
        self.load = 0
        self.runs: dict[str, Run] = {}  # prompt id → run
        self.cleanups: dict[str, str] = {}  # prompt id → staged folder being removed
        self.abandoned: set[str] = set()  # our prompts left behind when it went away
        self.ws: WebSocket | None = None
        self.ws_generation = 0
        self.current: str | None = None  # the prompt it runs now (from execution_start)
        self.next_probe = 0.0
        self.check_now = False

    @property
    def label(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc


class Pool:
    def __init__(self, manifest: Manifest, servers: list[str], out: Path, *, max_queue: int = 2, poll_s: float = 2.0,
                 max_attempts: int = 3, http_timeout: float = 30.0, progress_every_s: float = 2.0, log: Log = print,
                 observer: Callable[[Slot, dict[str, Any]], None] | None = None, give_up_after_s: float = 600.0) -> None:
        if not servers:
            raise ValueError("give at least one --server, e.g. --server http://127.0.0.1:8188")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.manifest = manifest
        self.out = Path(out)
        self.slots = [Slot(url, http_timeout) for url in dict.fromkeys(servers)]
        self.max_queue, self.poll_s, self.max_attempts = max_queue, poll_s, max_attempts
        self.progress_every_s, self.log, self.observer, self.give_up_after_s = progress_every_s, log, observer, give_up_after_s
        self.client_id = uuid.uuid4().hex
        self.events: queue.Queue = queue.Queue()
        self.graph = graphs.load_graph(manifest.graph_path)
        self.train_id = graphs.node_of(self.graph, graphs.TRAIN_CLASS)
        self.export_id = graphs.node_of(self.graph, graphs.EXPORT_CLASS)
        self.routed: dict[str, dict[str, graphs.InputSpec]] = {}
        self.runs = [Run(job) for job in manifest.jobs]
        self.state = results.State(self.out)
        self.cancelling = False
        self.started = time.monotonic()

    # --- setup ------------------------------------------------------------------------------------

    def _connect(self, slot: Slot) -> bool:
        """Probe a server, check the graph and every job's settings against its nodes, open the websocket."""
        try:
            info = slot.client.object_info()
        except (ServerDown, Refused) as e:
            slot.alive, slot.next_probe = False, time.monotonic() + 5
            self.log(f"{slot.label}: not answering ({e})")
            return False
        try:
            routed = {run.job.name: graphs.route_settings(self.graph, info, run.job.settings) for run in self.runs}
        except graphs.GraphError as e:
            if any(cls not in info for cls in {n["class_type"] for n in self.graph.values()}):
                slot.usable = False
                self.log(f"{slot.label}: left out of the pool: {e}")
                return False
            raise
        self.routed = self.routed or routed
        slot.alive, slot.usable = True, True
        self._open_ws(slot)
        self._forget_abandoned(slot)
        self._sweep_stale(slot)
        return True

    def _open_ws(self, slot: Slot) -> None:
        parts = urllib.parse.urlsplit(slot.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        slot.ws_generation += 1
        generation = slot.ws_generation
        try:
            ws = WebSocket(f"{scheme}://{parts.netloc}{parts.path}/ws?clientId={self.client_id}")
            ws.settimeout(None)
        except (OSError, WebSocketClosed) as e:
            slot.ws = None
            self.log(f"{slot.label}: websocket unavailable ({e}); following its jobs by polling /history")
            return
        slot.ws = ws

        def listen() -> None:
            try:
                while True:
                    msg = ws.recv_json()
                    if msg is not None:
                        self.events.put((slot, generation, msg))
            except (WebSocketClosed, OSError, ValueError) as e:
                self.events.put((slot, generation, {"type": "_closed", "data": {"reason": str(e)}}))

        threading.Thread(target=listen, name=f"ws-{slot.label}", daemon=True).start()

    def _close_ws(self, slot: Slot) -> None:
        if slot.ws is not None:
            slot.ws_generation += 1
            slot.ws.close()
            slot.ws = None

    @staticmethod
    def _withdraw(slot: Slot, ids: set[str] | dict[str, Any]) -> None:
        """Delete those of ``ids`` still queued on the server and interrupt those running; nothing else."""
        running, pending = slot.client.queue()
        slot.client.delete_queued([p for p in pending if p in ids])
        for pid in running:
            if pid in ids:
                slot.client.interrupt(pid)

    def _forget_abandoned(self, slot: Slot) -> None:
        """Our prompts left on a server that seemed gone but answers again: delete or stop them."""
        if not slot.abandoned:
            return
        try:
            self._withdraw(slot, slot.abandoned)
        except (ServerDown, Refused) as e:
            self.log(f"{slot.label}: could not withdraw abandoned prompts ({e})")
        slot.abandoned.clear()

    def _sweep_stale(self, slot: Slot) -> None:
        for folder in self.state.stale.pop(slot.url, []):
            self._cleanup(slot, folder)
        self.state.save()

    def _cleanup(self, slot: Slot, folder: str) -> None:
        """Queue DTI Pool Cleanup for a staged folder (at the front: it takes milliseconds)."""
        pid = uuid.uuid4().hex
        try:
            slot.client.submit(graphs.cleanup_prompt(folder), pid, self.client_id, front=True)
            slot.cleanups[pid] = folder
        except ServerDown as e:
            self.state.stale.setdefault(slot.url, []).append(folder)
            self._down(slot, str(e))
        except Refused as e:
            self.log(f"{slot.label}: cleanup of {folder} refused ({e}); remove input/{folder} there by hand")

    # --- the loop ---------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        for run in self.runs:
            row = self.state.finished(run.job)
            if row is not None:
                run.status, run.row = "skipped", row
                self.log(f"skip {run.job.name}: done in an earlier run ({row['file']}, sha256 {row['sha256'][:12]})")
        for slot in self.slots:
            self._connect(slot)
        if not any(s.alive for s in self.slots):
            raise ServerDown("no server of the pool answered: " + ", ".join(s.url for s in self.slots))
        todo = sum(r.status == "pending" for r in self.runs)
        self.log(f"{todo} job(s) to run on {sum(s.alive for s in self.slots)} server(s), {len(self.runs) - todo} already done")
        try:
            self._loop()
        except KeyboardInterrupt:
            self.cancel()
            raise
        finally:
            self._finish()
        return [r.row for r in self.runs if r.row is not None]

    def _unfinished(self) -> bool:
        return any(r.status in ("pending", "submitted", "running") for r in self.runs) or any(s.cleanups for s in self.slots if s.alive)

    def _loop(self) -> None:
        next_poll = 0.0
        nobody_since: float | None = None
        while self._unfinished():
            now = time.monotonic()
            for slot in self.slots:
                if not slot.alive and slot.usable and now >= slot.next_probe:
                    slot.next_probe = now + 5
                    if self._probe(slot):
                        self.log(f"{slot.label}: answering again; back in the pool")
                        self._connect(slot)
            if not any(s.alive for s in self.slots):
                nobody_since = nobody_since or now
                if now - nobody_since > self.give_up_after_s:
                    for run in self.runs:
                        if run.status == "pending":
                            self._fail(run, f"no server of the pool answered for {self.give_up_after_s:.0f} s")
                    break
            else:
                nobody_since = None
            self._dispatch()
            try:
                slot, generation, msg = self.events.get(timeout=0.25)
                if generation == slot.ws_generation:
                    self._on_event(slot, msg)
                while True:  # drain what else arrived
                    slot, generation, msg = self.events.get_nowait()
                    if generation == slot.ws_generation:
                        self._on_event(slot, msg)
            except queue.Empty:
                pass
            now = time.monotonic()
            for slot in self.slots:
                if slot.alive and (slot.check_now or now >= next_poll):
                    slot.check_now = False
                    self._check(slot)
            if now >= next_poll:
                next_poll = now + self.poll_s

    def _probe(self, slot: Slot) -> bool:
        try:
            slot.client.queue_length(timeout=3)
            return True
        except (ServerDown, Refused):
            return False

    def _dispatch(self) -> None:
        pending = [r for r in self.runs if r.status == "pending"]
        if not pending:
            return
        alive = [s for s in self.slots if s.alive]
        for slot in alive:
            try:
                slot.load = slot.client.queue_length(timeout=5)
            except ServerDown as e:
                self._down(slot, str(e))
        for run in pending:
            alive = [s for s in self.slots if s.alive]
            if not alive:
                return
            candidates = [s for s in alive if s.url not in run.refused]
            if not candidates:
                self._fail(run, "every server refused the prompt: " + " | ".join(f"{u}: {m}" for u, m in run.refused.items()))
                continue
            slot = min(candidates, key=lambda s: (s.load, len(s.runs)))
            if slot.load >= self.max_queue:
                continue
            self._submit(run, slot)

    def _submit(self, run: Run, slot: Slot) -> None:
        job = run.job
        folder = graphs.staging_folder(job)
        prompt = graphs.build_prompt(self.graph, self.routed[job.name], job)
        pid = uuid.uuid4().hex
        try:
            for path in job.images:
                slot.client.upload_image(path, folder)
            answer = slot.client.submit(prompt, pid, self.client_id)
        except ServerDown as e:
            self.state.stale.setdefault(slot.url, []).append(folder)
            self._down(slot, str(e))
            return
        except Refused as e:
            run.refused[slot.url] = str(e)
            self.log(f"{job.name}: {slot.label} refused it: {e}")
            self._cleanup(slot, folder)
            return
        if answer and answer.get("node_errors"):
            self.log(f"{job.name}: {slot.label} queued it with node errors {answer['node_errors']}")
        run.status, run.slot, run.prompt_id = "submitted", slot, pid
        run.attempts += 1
        run.step, run.total, run.started, run.loss = 0, 0, None, None
        slot.runs[pid] = run
        slot.load += 1
        self.log(f"{job.name}: queued on {slot.label} (attempt {run.attempts}, its queue {slot.load})")

    # --- following prompts ------------------------------------------------------------------------

    def _on_event(self, slot: Slot, msg: dict[str, Any]) -> None:
        kind, data = msg.get("type"), msg.get("data") or {}
        if self.observer is not None:
            self.observer(slot, msg)
        if kind == "_closed":
            slot.ws = None
            if not self._probe(slot):
                self._down(slot, f"websocket closed ({data.get('reason')}) and /queue does not answer")
            else:
                self._open_ws(slot)
                slot.check_now = True
            return
        pid = data.get("prompt_id")
        if kind == "execution_start":
            slot.current = pid
            run = slot.runs.get(pid)
            if run is not None:
                run.status, run.started = "running", time.monotonic()
        elif kind == "progress" and pid in slot.runs and str(data.get("node")) == self.train_id:
            run = slot.runs[pid]
            run.status, run.step, run.total = "running", int(data.get("value", 0)), int(data.get("max", 0))
            self._progress_line(run)
        elif kind == "dti.train.progress" and slot.current in slot.runs:
            slot.runs[slot.current].loss = data.get("loss")
        elif kind in ("execution_success", "execution_error", "execution_interrupted") or (
                kind == "executing" and data.get("node") is None and pid is not None):
            if pid in slot.runs or pid in slot.cleanups:
                slot.check_now = True

    def _check(self, slot: Slot) -> None:
        """Settle every prompt of ours on the server that has left its queue (history is the authority)."""
        if not slot.runs and not slot.cleanups:
            return
        try:
            running, pending = slot.client.queue()
            queued = set(running) | set(pending)
            for pid in [p for p in list(slot.runs) + list(slot.cleanups) if p not in queued]:
                entry = slot.client.history(pid)
                if pid in slot.cleanups:
                    folder = slot.cleanups.pop(pid)
                    if entry is None or entry.get("status", {}).get("status_str") != "success":
                        self.log(f"{slot.label}: cleanup of {folder} did not run; it will be retried on the next run")
                        self.state.stale.setdefault(slot.url, []).append(folder)
                        self.state.save()
                    continue
                run = slot.runs[pid]
                if entry is None:
                    slot.runs.pop(pid)
                    self._requeue(run, f"its prompt vanished from {slot.label} (restarted or deleted there)")
                else:
                    self._settle(slot, run, entry)  # may find the server gone: _down then still sees the run
                    slot.runs.pop(pid, None)
        except ServerDown as e:
            self._down(slot, str(e))
        except Refused as e:  # a 4xx on /queue or /history: try again at the next poll
            self.log(f"{slot.label}: could not read the queue or history ({e}); retrying")

    def _settle(self, slot: Slot, run: Run, entry: dict[str, Any]) -> None:
        status = entry.get("status") or {}
        messages = {m[0]: m[1] for m in status.get("messages", []) if isinstance(m, list) and len(m) == 2}
        folder = graphs.staging_folder(run.job)
        if status.get("status_str") == "success":
            self._collect(slot, run, entry)
        elif "execution_error" in messages:
            e = messages["execution_error"]
            text = f"{e.get('node_type')} (node {e.get('node_id')}): {e.get('exception_type')}: {e.get('exception_message', '').strip()}"
            self._fail(run, f"{slot.label}: {text}", slot)
        elif "execution_interrupted" in messages and self.cancelling:
            run.status = "cancelled"
        elif "execution_interrupted" in messages:
            self._requeue(run, f"interrupted on {slot.label} (not by us)")
        else:
            self._requeue(run, f"{slot.label} ended it without success or error ({status})")
        self._cleanup(slot, folder)

    def _collect(self, slot: Slot, run: Run, entry: dict[str, Any]) -> None:
        job = run.job
        outputs = entry.get("outputs") or {}
        exported = (outputs.get(self.export_id) or {}).get("dti_pool") or []
        summary = "".join((outputs.get(self.train_id) or {}).get("text") or [])
        if not exported:
            self._fail(run, f"{slot.label}: the graph ran but DTI Pool Export listed no file (outputs: {sorted(outputs)})", slot)
            return
        item = exported[0]
        data = b""
        for _ in range(2):
            data = slot.client.view(item["filename"], item["subfolder"], item.get("type", "output"))
            if results.sha256_bytes(data) == item["sha256"]:
                break
        else:
            self._fail(run, f"{slot.label}: downloaded {item['filename']} twice and its sha256 never matched the server's", slot)
            return
        rel = f"{results.CONCEPTS}/{job.name}.safetensors"
        results.write_atomic(self.out / rel, data)
        row = {"subject": job.subject, "method": job.method, "job": job.name, "status": "done", "server": slot.url,
               "sha256": item["sha256"], "file": rel, "attempts": run.attempts, "error": "",
               **results.parse_summary(summary), **results.concept_facts(data)}
        run.status, run.row = "done", row
        self.state.record(job, row)
        done = sum(r.status in ("done", "skipped") for r in self.runs)
        self.log(f"[{done}/{len(self.runs)}] {job.name}: done on {slot.label}: {row.get('steps', '?')} steps, "
                 f"{row.get('s_per_step', '?')} s/step, final loss {row.get('final_loss', '?')} → {rel}")

    def _fail(self, run: Run, error: str, slot: Slot | None = None) -> None:
        run.status = "failed"
        run.row = {"subject": run.job.subject, "method": run.job.method, "job": run.job.name, "status": "failed",
                   "server": slot.url if slot else "", "attempts": run.attempts, "error": error}
        self.state.record(run.job, run.row)
        self.log(f"{run.job.name}: FAILED: {error}")

    def _requeue(self, run: Run, why: str) -> None:
        run.notes.append(why)
        if run.attempts >= self.max_attempts:
            self._fail(run, f"gave up after {run.attempts} attempts; last: {why}")
            return
        run.status, run.slot, run.prompt_id = "pending", None, None
        self.log(f"{run.job.name}: {why}; resubmitting elsewhere")

    def _down(self, slot: Slot, reason: str) -> None:
        if not slot.alive:
            return
        slot.alive = False
        slot.next_probe = time.monotonic() + 5
        self._close_ws(slot)
        moved = list(slot.runs.items())
        self.log(f"{slot.label}: went away ({reason}); moving {len(moved)} job(s) to the rest of the pool")
        for pid, run in moved:
            slot.abandoned.add(pid)
            self.state.stale.setdefault(slot.url, []).append(graphs.staging_folder(run.job))
            self._requeue(run, f"{slot.label} went away at step {run.step}/{run.total or '?'}")
        for folder in slot.cleanups.values():
            self.state.stale.setdefault(slot.url, []).append(folder)
        slot.runs.clear()
        slot.cleanups.clear()
        self.state.save()

    # --- reporting, cancelling, finishing ---------------------------------------------------------

    def _seconds_per_step(self) -> float | None:
        rates = [r.row["s_per_step"] for r in self.runs if r.row and r.row.get("s_per_step")]
        now = time.monotonic()
        rates += [(now - r.started) / r.step for r in self.runs if r.status == "running" and r.started and r.step > 0]
        return sum(rates) / len(rates) if rates else None

    def _progress_line(self, run: Run) -> None:
        now = time.monotonic()
        if now - run.last_line < self.progress_every_s and run.step < run.total:
            return
        run.last_line = now
        sps = (now - run.started) / run.step if run.started and run.step else None
        parts = [f"{run.job.name} @ {run.slot.label if run.slot else '?'}: step {run.step}/{run.total}"]
        if sps:
            parts.append(f"{sps:.3f} s/step, job ETA {_duration(sps * (run.total - run.step))}")
        if run.loss is not None:
            parts.append(f"loss {run.loss:.4g}")
        eta = self._overall_eta()
        if eta is not None:
            parts.append(f"overall ETA {_duration(eta)}")
        self.log(" | ".join(parts))

    def _overall_eta(self) -> float | None:
        sps = self._seconds_per_step()
        totals = [r.total for r in self.runs if r.total]
        if sps is None or not totals:
            return None
        typical = sum(totals) / len(totals)
        left = sum((r.total or typical) - r.step for r in self.runs if r.status in ("pending", "submitted", "running"))
        return left * sps / max(1, sum(s.alive for s in self.slots))

    def cancel(self) -> None:
        """Ctrl-C: delete our queued prompts, interrupt our running ones, clean their staged images."""
        self.cancelling = True
        self.log("cancelling: withdrawing this run's prompts (other clients' prompts are left alone)")
        for slot in self.slots:
            if not slot.alive or not slot.runs:
                continue
            runs = list(slot.runs.values())  # _cleanup may find the server gone, and _down clears slot.runs
            for run in runs:
                run.status = "cancelled"
            try:
                self._withdraw(slot, slot.runs)
                for run in runs:
                    if slot.alive:
                        self._cleanup(slot, graphs.staging_folder(run.job))
            except (ServerDown, Refused) as e:
                self.log(f"{slot.label}: could not withdraw ({e})")
                self.state.stale.setdefault(slot.url, []).extend(graphs.staging_folder(r.job) for r in runs)
            slot.runs.clear()
        for run in self.runs:
            if run.status == "pending":
                run.status = "cancelled"
        deadline = time.monotonic() + 15
        while any(s.cleanups for s in self.slots if s.alive) and time.monotonic() < deadline:
            for slot in self.slots:
                if slot.alive:
                    self._check(slot)
            time.sleep(0.2)
        for slot in self.slots:
            for folder in slot.cleanups.values():
                self.state.stale.setdefault(slot.url, []).append(folder)
            slot.cleanups.clear()
        self.state.save()

    def _finish(self) -> None:
        for slot in self.slots:
            self._close_ws(slot)
        for run in self.runs:
            if run.row is None and run.status == "cancelled":
                run.row = {"subject": run.job.subject, "method": run.job.method, "job": run.job.name, "status": "cancelled",
                           "attempts": run.attempts, "error": "cancelled (Ctrl-C)"}
        rows = [r.row for r in self.runs if r.row is not None]
        csv_path, json_path = results.write_table(self.out, rows)
        sheet = results.contact_sheet(self.out, rows, {r.job.name: r.job for r in self.runs})
        done = sum(r.status in ("done", "skipped") for r in self.runs)
        failed = sum(r.status == "failed" for r in self.runs)
        self.log(f"{done}/{len(self.runs)} done, {failed} failed in {_duration(time.monotonic() - self.started)}; "
                 f"table {csv_path} and {json_path.name}" + (f", sheet {sheet.name}" if sheet else " (no Pillow: no sheet)"))


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
