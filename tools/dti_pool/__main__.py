"""python -m tools.dti_pool run manifest.toml --server http://127.0.0.1:8188 [--server …] --out results/"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .comfy_http import ServerDown
from .graph import GraphError
from .manifest import ManifestError, load_manifest
from .scheduler import Pool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dti_pool",
                                     description="Train a manifest of subjects × methods across a pool of ComfyUI servers.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every job of the manifest that is not done yet")
    run.add_argument("manifest", type=Path, help="a .toml or .json manifest (see workflows/pool_example.toml)")
    run.add_argument("--server", action="append", required=True, metavar="URL",
                     help="a ComfyUI server, e.g. http://127.0.0.1:8188; repeat for each one")
    run.add_argument("--out", type=Path, required=True, help="results folder (concepts, table, sheet, state.json)")
    run.add_argument("--graph", type=Path, help="an API-format graph to use instead of the manifest's")
    run.add_argument("--max-queue", type=int, default=2,
                     help="submit to a server only while its /queue holds fewer prompts than this (default 2)")
    run.add_argument("--poll", type=float, default=2.0, help="seconds between /history checks (default 2)")
    run.add_argument("--attempts", type=int, default=3, help="submissions per job before giving up (default 3)")
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest(args.manifest, args.graph)
        pool = Pool(manifest, args.server, args.out, max_queue=args.max_queue, poll_s=args.poll, max_attempts=args.attempts,
                    log=lambda line: print(line, flush=True))
        rows = pool.run()
    except (ManifestError, GraphError, ServerDown, ValueError) as e:
        print(f"dti_pool: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dti_pool: cancelled; finished jobs are kept and a re-run skips them", file=sys.stderr)
        return 130
    return 0 if all(r.get("status") == "done" for r in rows) and len(rows) == len(manifest.jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
