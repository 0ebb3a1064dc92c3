"""web/docs/<NodeId>.md from the node schemas, so the help pages cannot drift from the nodes.

    python tests/support/node_docs.py      # rewrite web/docs/*.md

ComfyUI's front end shows WEB_DIRECTORY/docs/<NodeId>.md as a node's help page. Everything here
comes from define_schema(): description, tooltips, defaults, ranges and choices, plus a few notes
per node that a table cannot carry.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "web" / "docs"

NOTES = {
    "DTITrainConcept": [
        "-1 in *steps*, *learning_rate* and *resolution* (and in DTI Train Options' *kappa*, *batch_size*, *grad_accum*) "
        "means the family default: SDXL 768², batch 4, 400 steps, 0.04 rad/step, κ 1e-4; SD1.x the same at 512²; "
        "Gemma models (Lumina 2, SANA) 1024², batch 2 × 2 accumulation, 500 steps, κ 5e-5.",
        "Every other setting is on **DTI Train Options**, connected to *options*; unconnected, all of them take their "
        "defaults. One options node can feed several DTI Train nodes (e.g. a TI and a DTI run of one subject).",
        "*learning_rate* is the angle each vector turns per step (the reference's 0.01 scaled by batch 4). For the "
        "AdamW baselines (ti, ti_rescaled, crossinit) it is the AdamW rate (default 0.02).",
        "Interrupting keeps the last good vectors: a resumable checkpoint goes to `output/dti_checkpoints/<name>/` and, "
        "with *save* on, the concept to the embeddings folder. Repeated NaN losses stop the run the same way.",
        "The node shows a live loss / norm chart while it runs (the pack's web extension) and its summary afterwards.",
    ],
    "DTITrainOptions": [
        "-1 means the model family's default (see DTI Train); for *vectors*, one vector per initializer sub-token.",
        "*beta* 0 is the paper's update (each step turns a vector by exactly the learning rate).",
    ],
    "DTITrain": [
        "The first version of DTI Train, with all 29 settings on one node, kept so that saved graphs load and run with "
        "the same meaning (there, 0 in *steps*, *learning_rate*, *batch_size*, *grad_accum*, *resolution* and "
        "*vectors* means the default). New graphs: DTI Train + DTI Train Options.",
    ],
    "DTILoadEmbedding": [
        "Reads DTI concepts and ordinary TI files: A1111 `.pt` (only through `torch.load(weights_only=True)`), kohya "
        "`emb_params`, OneTrainer (`clip_l`/`clip_g`/`gemma`), diffusers / official DTI `learned_embeds[_2].safetensors` "
        "(the SDXL pair is merged). A file made for another model family is refused with both widths named.",
        "For CLIP models the conditioning equals a stock CLIPTextEncode of the same prompt with `embedding:name`. "
        "Gemma encoders (Lumina 2, SANA) ignore `embedding:` in stock prompts; this node is how to use such concepts.",
    ],
    "DTISlerpConcepts": [
        "With *t_values* the conditioning holds one entry per t in its batch: set the latent batch size to the number "
        "of values and one KSampler run renders the strip.",
        "Connecting *concept_c* (and *concept_d*) switches to a weighted spherical (Karcher) mean, not chained slerps.",
        "Antipodal rows have no unique great circle and are refused; so are concepts with different encoders, vector "
        "counts or embedding spaces.",
    ],
    "DTINormInspector": [
        "Cosine neighbours of a vector say what it means; Euclidean neighbours of an inflated TI vector are merely the "
        "largest tokens. The positional probe shows how much of the position signal survives the first LayerNorm at the "
        "vector's norm, against vocabulary tokens (Gemma encoders use rotary positions, so it does not apply there).",
    ],
    "DTISanaInstruction": [
        "The DTI reference trains SANA without the instruction and samples with it; by default this pack uses it for "
        "both, so that a concept meets at sampling time the context it was trained in. Whatever you choose, use the "
        "same for DTI Train and for DTI Load Embedding / Slerp Concepts with that concept.",
    ],
    "DTISaveConcept": [
        "Files go only into the embeddings folder; names with paths, `..` or spaces are refused before anything runs.",
        "ComfyUI caches CLIPTextEncode by prompt text: prompts already encoded with an older file of the same name keep "
        "the old vectors until their text changes, which *increment* avoids.",
    ],
}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f"`{value}`" if value else "(empty)"
    return f"`{value}`"


FILE_LISTS = {"embedding": "a file from the embeddings folder (subfolders included)",
              "resume": "`none`, or a checkpoint from output/dti_checkpoints"}


def _input_row(i) -> str:
    if i.id in FILE_LISTS:  # choices depend on the user's folders, not on the schema
        return f"| `{i.id}` | COMBO | {FILE_LISTS[i.id]} | {i.as_dict().get('tooltip', '')} |"
    d = i.as_dict()
    io_type = i.get_io_type()
    kind = "COMBO" if isinstance(getattr(i, "options", None), list) else io_type
    facts = []
    if "default" in d:
        facts.append(f"default {_fmt(d['default'])}")
    if "min" in d or "max" in d:
        facts.append(f"range {_fmt(d.get('min'))}–{_fmt(d.get('max'))}")
    if "step" in d:
        facts.append(f"step {_fmt(d['step'])}")
    options = getattr(i, "options", None)
    if isinstance(options, list) and 0 < len(options) <= 8:
        facts.append("choices " + ", ".join(_fmt(o) for o in options))
    if d.get("optional"):
        facts.append("optional")
    return f"| `{i.id}` | {kind} | {'; '.join(facts)} | {d.get('tooltip', '')} |"


def render(cls) -> str:
    schema = cls.define_schema()
    lines = [f"# {schema.display_name}", "", schema.description, "", "## Inputs", "",
             "| input | type | values | what it does |", "| --- | --- | --- | --- |"]
    lines += [_input_row(i) for i in schema.inputs]
    lines += ["", "## Outputs", "", "| output | type | what it is |", "| --- | --- | --- |"]
    for o in schema.outputs or []:
        lines.append(f"| {o.display_name or o.id} | {o.get_io_type()} | {o.tooltip or ''} |")
    notes = NOTES.get(schema.node_id, [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def node_classes(pack) -> list:
    import asyncio
    import importlib

    extension = asyncio.run(importlib.import_module(pack.__name__ + ".nodes").comfy_entrypoint())
    return asyncio.run(extension.get_node_list())


def write(pack) -> list[Path]:
    DOCS.mkdir(parents=True, exist_ok=True)
    written = []
    for cls in node_classes(pack):
        path = DOCS / f"{cls.define_schema().node_id}.md"
        path.write_text(render(cls))
        written.append(path)
    return written


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import workflow_tools

    workflow_tools._load_comfy_with_pack()
    import tiny_comfy

    for p in write(sys.modules[str(tiny_comfy.PACK_ROOT).replace(".", "_x_")]):
        print("wrote", p)
