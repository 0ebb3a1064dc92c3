"""ComfyUI adapters: the host side of the pack (the only code besides nodes/ that imports comfy).

Text sides (CLIP, Gemma), the denoise side, images, the training session, and host helpers split
by job (folders, models, autograd, progress). Nodes call these; these call the host-free ``dti``.
"""
