"""ComfyUI adapters and nodes: the only part of the pack that imports comfy."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .inspector import DTINormInspector
from .load import DTILoadEmbedding
from .pool_export import POOL_NODES
from .sana_options import DTISanaInstruction
from .save import DTISaveConcept
from .slerp import DTISlerpConcepts
from .train import DTITrain


class DTIExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [DTITrain, DTILoadEmbedding, DTISlerpConcepts, DTINormInspector, DTISaveConcept, DTISanaInstruction, *POOL_NODES]


async def comfy_entrypoint() -> DTIExtension:
    return DTIExtension()
