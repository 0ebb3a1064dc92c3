"""Command-line tools that talk to ComfyUI over HTTP; none of them imports ComfyUI or torch."""
