"""ComfyUI's HTTP API, standard library only: /prompt, /queue, /history, /interrupt, /object_info,
/upload/image and /view."""

from __future__ import annotations

import json
import mimetypes
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any


class ServerDown(ConnectionError):
    """The server did not answer (refused, reset, timed out, 5xx): its jobs go elsewhere."""


class Refused(RuntimeError):
    """The server answered 4xx: it will not take this request (e.g. a prompt failing its validation)."""

    def __init__(self, message: str, status: int, body: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ComfyClient:
    """One ComfyUI server, e.g. ComfyClient("http://127.0.0.1:8188")."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"server {url!r} is not an http(s) URL such as http://127.0.0.1:8188")
        self.url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ComfyClient({self.url!r})"

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                 timeout: float | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:  # noqa: S310 (http(s) only, checked above)
                return r.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                payload: Any = json.loads(raw)
            except ValueError:
                payload = raw.decode("utf-8", "replace")
            if e.code >= 500:
                raise ServerDown(f"{self.url}{path}: HTTP {e.code}: {str(payload)[:300]}") from e
            raise Refused(f"{self.url}{path}: HTTP {e.code}: {describe_refusal(payload)}", e.code, payload) from e
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise ServerDown(f"{self.url}{path}: {getattr(e, 'reason', e)}") from e

    def get_json(self, path: str, timeout: float | None = None) -> Any:
        return json.loads(self._request("GET", path, timeout=timeout))

    def post_json(self, path: str, data: Any, timeout: float | None = None) -> Any:
        raw = self._request("POST", path, json.dumps(data).encode(), {"Content-Type": "application/json"}, timeout)
        return json.loads(raw) if raw.strip() else None

    # --- the routes ---------------------------------------------------------------------------

    def object_info(self) -> dict[str, Any]:
        return self.get_json("/object_info")

    def queue_length(self, timeout: float | None = None) -> int:
        q = self.get_json("/queue", timeout=timeout)
        return len(q.get("queue_running", [])) + len(q.get("queue_pending", []))

    def queue(self) -> tuple[list[str], list[str]]:
        """(running prompt ids, pending prompt ids)."""
        q = self.get_json("/queue")
        return [item[1] for item in q.get("queue_running", [])], [item[1] for item in q.get("queue_pending", [])]

    def submit(self, prompt: dict[str, Any], prompt_id: str, client_id: str, front: bool = False) -> dict[str, Any]:
        # Our own prompt_id (POST /prompt accepts one), so a lost response still leaves the job traceable.
        body: dict[str, Any] = {"prompt": prompt, "prompt_id": prompt_id, "client_id": client_id}
        if front:
            body["front"] = True
        return self.post_json("/prompt", body)

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        return self.get_json("/history/" + urllib.parse.quote(prompt_id)).get(prompt_id)

    def delete_queued(self, prompt_ids: list[str]) -> None:
        if prompt_ids:
            self.post_json("/queue", {"delete": list(prompt_ids)}, timeout=5)

    def interrupt(self, prompt_id: str) -> None:
        """Interrupts that prompt only if it is the one running (ComfyUI ≥ 0.3.6x checks the id)."""
        self.post_json("/interrupt", {"prompt_id": prompt_id}, timeout=5)

    def upload_image(self, path: Path, subfolder: str) -> dict[str, Any]:
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts = []
        for name, value in (("type", "input"), ("subfolder", subfolder), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        raw = self._request("POST", "/upload/image", b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return json.loads(raw)

    def view(self, filename: str, subfolder: str, kind: str = "output") -> bytes:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": kind})
        return self._request("GET", "/view?" + query, timeout=max(self.timeout, 120))


def describe_refusal(payload: Any) -> str:
    """ComfyUI's validation answer ({error, node_errors}) as one line."""
    if not isinstance(payload, dict):
        return str(payload)[:500]
    error = payload.get("error")
    parts = [error.get("message", str(error)) if isinstance(error, dict) else str(error)] if error else []
    for node_id, info in (payload.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            parts.append(f"node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "; ".join(parts) or json.dumps(payload)[:500]
