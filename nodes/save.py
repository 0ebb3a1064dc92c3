"""DTI Save Concept: write any concept (trained, blended, rescaled) to the embeddings folder."""

from __future__ import annotations

from ..adapters.folders import embeddings_folder
from ..dti import formats
from ..dti.settings import ON_EXISTS
from . import validation
from .api import io, ui
from .types import DTIConcept


class DTISaveConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DTISaveConcept",
            display_name="DTI Save Concept",
            category="DTI",
            description="Saves a concept to the embeddings folder in the layout stock loaders read, so embedding:name works.",
            is_output_node=True,
            inputs=[
                DTIConcept.Input("concept", tooltip="The concept to save (e.g. a blend from DTI Slerp Concepts)."),
                io.String.Input("name", default="my_blend", tooltip="File name; prompts then use embedding:name."),
                io.Combo.Input("if_exists", options=list(ON_EXISTS), default="increment",
                               tooltip="increment (name_2, …), overwrite, or stop with an error."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the file was written.")],
        )

    @classmethod
    def validate_inputs(cls, name, if_exists) -> bool | str:
        checks = []
        if name is not None:
            checks.append(lambda: validation.name_problem(name))
            if if_exists is not None:
                checks.append(lambda: validation.existing_file_problem(name, if_exists))
        return validation.check(cls, {"if_exists": if_exists}, *checks)

    @classmethod
    def execute(cls, concept, name, if_exists) -> io.NodeOutput:
        path = formats.save_concept(concept, embeddings_folder(), name, if_exists)
        text = f"saved {concept.describe()} to {path}; use it as embedding:{path.stem}"
        return io.NodeOutput(str(path), ui=ui.PreviewText(text))
