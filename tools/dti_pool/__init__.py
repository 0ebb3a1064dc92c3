"""dti_pool: train a manifest of subjects across a pool of ComfyUI servers, over ComfyUI's own HTTP API.

Standard library only (Pillow, when present, draws the contact sheet). See README.md.
"""
