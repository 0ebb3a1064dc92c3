"""DTI SANA Instruction: whether SANA prompts get SanaTextEncode's instruction, in training and use."""

from __future__ import annotations

from ..adapters.sana import INSTRUCTION_FLAG
from . import validation
from .api import io
from .types import Gemma

CHOICES = ("complex human instruction (as SanaTextEncode)", "none")


class DTISanaInstruction(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DTISanaInstruction",
            display_name="DTI SANA Instruction",
            category="DTI",
            description=(
                "Chooses whether the DTI nodes put SANA's 'complex human instruction' before prompts (as ExtraModels' "
                "SanaTextEncode does) or nothing (as the DTI reference trained). Connect its output wherever DTI nodes "
                "take the GEMMA text encoder; use the same choice for training and for using a concept."
            ),
            inputs=[
                Gemma.Input("gemma", tooltip="The GEMMA text encoder from ComfyUI_ExtraModels' Gemma Loader."),
                io.Combo.Input("instruction", options=list(CHOICES), default=CHOICES[0],
                               tooltip="With the instruction (default, matches SanaTextEncode) or without it."),
            ],
            outputs=[Gemma.Output(display_name="gemma", tooltip="The same text encoder, carrying the choice.")],
        )

    @classmethod
    def validate_inputs(cls, instruction) -> bool | str:
        return validation.check(cls, {"instruction": instruction})

    @classmethod
    def execute(cls, gemma, instruction) -> io.NodeOutput:
        return io.NodeOutput({**gemma, INSTRUCTION_FLAG: instruction == CHOICES[0]})
