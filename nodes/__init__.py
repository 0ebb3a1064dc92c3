"""The node classes a user sees; everything they call lives in ../adapters and ../dti."""

from __future__ import annotations

from typing_extensions import override

from .api import ComfyExtension, io
from .inspector import DTINormInspector
from .load import DTILoadEmbedding
from .pool_export import POOL_NODES
from .sana_instruction import DTISanaInstruction
from .save import DTISaveConcept
from .score import DTIConceptScore
from .slerp import DTISlerpConcepts
from .train import DTITrain, DTITrainLegacy, DTITrainOptions

NODES: list[type[io.ComfyNode]] = [
    DTITrain, DTITrainOptions, DTILoadEmbedding, DTISlerpConcepts, DTINormInspector, DTISaveConcept, DTISanaInstruction,
    *POOL_NODES, DTIConceptScore, DTITrainLegacy,
]


class DTIExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> DTIExtension:
    return DTIExtension()
