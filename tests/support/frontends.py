"""The ComfyUI front ends the browser tests run against.

ComfyUI v0.3.64 pins comfyui-frontend-package 1.27.10, but users install far newer front ends
(1.58.x boots against the same backend with ``main.py --front-end-root``). The pack's extension
(web/dti.js) and the example workflows have to work in both, so the web tests run once per front
end listed here.

A newer front end is installed once with pip into a cache folder outside the repository
(``$DTI_FRONTEND_CACHE`` or ~/.cache/comfyui-dti/frontend-<series>) and reused. Without network the
install fails fast and the tests of that front end skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "comfyui-frontend-package"


@dataclass(frozen=True)
class FrontEnd:
    """One front end: ``series`` None is the one the ComfyUI workspace pins (main.py's default)."""

    name: str
    series: str | None = None

    @property
    def requirement(self) -> str:
        return f"{PACKAGE}=={self.series}.*"


PINNED = FrontEnd("pinned")
NEWEST = FrontEnd("1.58", series="1.58")
ALL = (PINNED, NEWEST)


def cache_root() -> Path:
    return Path(os.environ.get("DTI_FRONTEND_CACHE") or Path.home() / ".cache" / "comfyui-dti")


def static_folder(target: Path) -> Path:
    """Where the package keeps index.html and the built assets inside a pip --target folder."""
    return target / "comfyui_frontend_package" / "static"


def installed_version(target: Path) -> str | None:
    infos = sorted(target.glob("comfyui_frontend_package-*.dist-info"))
    return infos[-1].name.removeprefix("comfyui_frontend_package-").removesuffix(".dist-info") if infos else None


def pinned_version() -> str | None:
    """The front end installed beside ComfyUI (the tests run in the workspace's Python)."""
    from importlib import metadata

    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def ensure(front: FrontEnd, python: str = sys.executable, timeout: float = 300) -> tuple[Path | None, str | None]:
    """(the --front-end-root to pass, None for the pinned one; the version the page should report)
    — installing the front end into the cache on first use. Raises RuntimeError, saying why, when it
    cannot be had."""
    if front.series is None:
        return None, pinned_version()
    target = cache_root() / f"frontend-{front.series}"
    if not (static_folder(target) / "index.html").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # install beside the final folder and rename, so an interrupted install never looks complete
        staging = Path(tempfile.mkdtemp(prefix=f"frontend-{front.series}-", dir=target.parent))
        cmd = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--retries", "0",
               "--timeout", "20", "--target", str(staging), front.requirement]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"pip install {front.requirement} took over {timeout:.0f} s (no network?)") from None
        if done.returncode != 0 or not (static_folder(staging) / "index.html").is_file():
            shutil.rmtree(staging, ignore_errors=True)
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"could not install {front.requirement} into {target} (no network?): {tail[0]}")
        if (static_folder(target) / "index.html").is_file():  # another test run installed it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
        else:
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return static_folder(target), installed_version(target)


def main() -> None:
    """Install every non-pinned front end into the cache (tests/run.sh calls this before pytest)."""
    for front in ALL:
        try:
            root, version = ensure(front)
        except RuntimeError as e:
            print(f"front end {front.name}: {e}; its web tests will skip")
            continue
        print(f"front end {front.name}: {PACKAGE} {version} at {root or 'the workspace default'}")


if __name__ == "__main__":
    main()
