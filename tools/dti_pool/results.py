"""What a run leaves in the out folder: the concepts, the state file, the table (CSV + JSON) and a
contact sheet. The state file is rewritten atomically after every finished job, so an interrupted
run loses nothing and a re-run skips what is done."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import struct
import tempfile
from array import array
from pathlib import Path
from typing import Any

from .manifest import Job, sha256_file

STATE_FILE = "state.json"
CONCEPTS = "concepts"
COLUMNS = ("subject", "method", "job", "status", "server", "steps", "s_per_step", "final_loss", "scores",
           "row_norms", "m_star", "sha256", "file", "attempts", "error")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder + rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class State:
    """out/state.json: per job name, its entry hash, file sha256 and table row; and staged image
    folders left on servers that went away (cleaned up when they answer again)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / STATE_FILE
        data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path} is not valid JSON ({e}); move it away to start afresh") from e
        self.jobs: dict[str, dict[str, Any]] = data.get("jobs", {})
        self.stale: dict[str, list[str]] = data.get("stale_staging", {})

    def save(self) -> None:
        payload = {"version": 1, "jobs": self.jobs, "stale_staging": {k: v for k, v in self.stale.items() if v}}
        write_atomic(self.path, json.dumps(payload, indent=1, sort_keys=True).encode())

    def finished(self, job: Job) -> dict[str, Any] | None:
        """The recorded row if this exact entry is done and its file is intact, else None."""
        entry = self.jobs.get(job.name)
        if not entry or entry.get("entry_hash") != job.entry_hash or entry.get("row", {}).get("status") != "done":
            return None
        path = self.out / entry["row"]["file"]
        if not path.is_file() or sha256_file(path) != entry["row"]["sha256"]:
            return None
        return entry["row"]

    def record(self, job: Job, row: dict[str, Any]) -> None:
        self.jobs[job.name] = {"entry_hash": job.entry_hash, "row": row}
        self.save()


# --- reading results ------------------------------------------------------------------------

_STEPS = re.compile(r"(\d+) steps \((\d+) this run, ([\d.]+) s, ([\d.]+) s/step\)")
_LOSS = re.compile(r"loss: first \S+ → last (\S+)")
_SCORE = re.compile(r"^\s*(?:score|clip[_ ]score|dino[_ ]score)\S*\s*[:=]\s*([-\d.eE+]+)", re.I | re.M)


def parse_summary(summary: str) -> dict[str, Any]:
    """steps, s/step, final loss (and scores, if a line reports any) from DTI Train's summary text."""
    out: dict[str, Any] = {}
    m = _STEPS.search(summary)
    if m:
        out["steps"], out["s_per_step"] = int(m.group(1)), float(m.group(4))
    m = _LOSS.search(summary)
    if m:
        try:
            out["final_loss"] = float(m.group(1))
        except ValueError:
            pass
    scores = _SCORE.findall(summary)
    if scores:
        out["scores"] = ";".join(scores)
    return out


def safetensors_rows(data: bytes) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Row norms of every F32 2-D tensor, and the metadata, without torch (header: u64 length + JSON)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    norms = {}
    for key, info in header.items():
        if info.get("dtype") != "F32" or len(info.get("shape", [])) != 2:
            continue
        rows, width = info["shape"]
        start, end = info["data_offsets"]
        values = array("f")
        values.frombytes(data[8 + n + start : 8 + n + end])
        norms[key] = [math.sqrt(sum(v * v for v in values[r * width : (r + 1) * width])) for r in range(rows)]
    return norms, meta


def concept_facts(data: bytes) -> dict[str, str]:
    """row_norms and m_star columns from a downloaded concept file."""
    norms, meta = safetensors_rows(data)
    m_star = {}
    try:
        for key, enc in (json.loads(meta.get("dti", "{}")).get("encoders") or {}).items():
            if enc.get("m_star") is not None:
                m_star[key] = enc["m_star"]
    except (json.JSONDecodeError, AttributeError):
        pass
    return {"row_norms": "; ".join(f"{k}: " + ",".join(f"{v:.5g}" for v in vs) for k, vs in sorted(norms.items())),
            "m_star": "; ".join(f"{k}: {v:.5g}" for k, v in sorted(m_star.items()))}


# --- the table and the sheet ------------------------------------------------------------------


def write_table(out: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    rows = sorted(rows, key=lambda r: (r["subject"], r["method"]))
    clean = [{c: r.get(c, "") for c in COLUMNS} for r in rows]
    json_path, csv_path = out / "results.json", out / "results.csv"
    write_atomic(json_path, json.dumps(clean, indent=1).encode())
    lines: list[str] = []

    class _Sink:
        def write(self, s: str) -> None:
            lines.append(s)

    writer = csv.DictWriter(_Sink(), fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(clean)
    write_atomic(csv_path, "".join(lines).encode())
    return csv_path, json_path


def contact_sheet(out: Path, rows: list[dict[str, Any]], jobs: dict[str, Job], thumb: int = 96, max_images: int = 6) -> Path | None:
    """One row per job: its training images, then the result's numbers. None when Pillow is absent."""
    try:
        from PIL import Image, ImageDraw, ImageOps
    except ImportError:
        return None
    rows = sorted(rows, key=lambda r: (r["subject"], r["method"]))
    text_w, pad = 420, 6
    width = pad + max_images * (thumb + pad) + text_w
    sheet = Image.new("RGB", (width, pad + len(rows) * (thumb + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        y = pad + i * (thumb + pad)
        job = jobs.get(row["job"])
        for j, path in enumerate((job.images if job else ())[:max_images]):
            try:
                with Image.open(path) as im:
                    sheet.paste(ImageOps.fit(im.convert("RGB"), (thumb, thumb)), (pad + j * (thumb + pad), y))
            except OSError:
                draw.rectangle([pad + j * (thumb + pad), y, pad + j * (thumb + pad) + thumb, y + thumb], outline="red")
        x = pad + max_images * (thumb + pad)
        lines = [f"{row['subject']} / {row['method']}  [{row['status']}]", f"server {row.get('server', '')}",
                 f"steps {row.get('steps', '')}  s/step {row.get('s_per_step', '')}  loss {row.get('final_loss', '')}",
                 f"norms {row.get('row_norms', '')}"[:70], f"m* {row.get('m_star', '')}"[:70]]
        if row.get("error"):
            lines.append(f"error: {row['error']}"[:70])
        draw.multiline_text((x, y + 2), "\n".join(lines), fill="black" if row["status"] == "done" else "red")
    path = out / "contact_sheet.png"
    sheet.save(path)
    return path
