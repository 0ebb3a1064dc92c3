"""Example workflows: build them in ComfyUI's UI format, convert them to the executor's API format,
and swap stock loaders for test-only ones.

Widget order comes from each node class's INPUT_TYPES, as the front end derives it, so this needs
ComfyUI importable with the pack loaded. The web tests check the conversion against the front
end's own graphToPrompt.

    python tests/support/workflow_tools.py          # rewrite workflows/*.json from the definitions below
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
UI_ONLY = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")
WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def node_class(type_name: str):
    import nodes

    if type_name not in nodes.NODE_CLASS_MAPPINGS:
        raise KeyError(f"node type {type_name!r} is not registered")
    return nodes.NODE_CLASS_MAPPINGS[type_name]


def input_specs(type_name: str) -> list[tuple[str, Any, dict]]:
    """(name, type, options) of required then optional inputs, in declaration order."""
    defs = node_class(type_name).INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, spec in defs.get(section, {}).items():
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, typ, opts))
    return out


def is_widget(typ: Any, opts: dict) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(typ, list) or typ in WIDGET_TYPES


def widget_slots(type_name: str) -> list[tuple[str, bool]]:
    """Widget names in widgets_values order; True marks the hidden 'control after generate' value."""
    slots = []
    for name, typ, opts in input_specs(type_name):
        if is_widget(typ, opts):
            slots.append((name, False))
            # the front end's rule: a second, hidden value follows seed-like widgets
            if opts.get("control_after_generate") or name in ("seed", "noise_seed"):
                slots.append((name, True))
    return slots


def outputs_of(type_name: str) -> list[tuple[str, str]]:
    cls = node_class(type_name)
    types = list(cls.RETURN_TYPES)
    names = list(getattr(cls, "RETURN_NAMES", None) or types)
    return list(zip(names, [t if isinstance(t, str) else "COMBO" for t in types]))


# ---------------------------------------------------------------------------------------------
# Building UI-format graphs


@dataclass
class Graph:
    title: str
    nodes: list[dict] = field(default_factory=list)
    links: list[list] = field(default_factory=list)

    def add(self, type_name: str, pos: tuple[int, int], size: tuple[int, int] = (320, 200), title: str | None = None,
            **widgets: Any) -> int:
        node_id = len(self.nodes) + 1
        if type_name in UI_ONLY:
            node = {"id": node_id, "type": type_name, "pos": list(pos), "size": list(size), "flags": {}, "order": node_id - 1,
                    "mode": 0, "properties": {}, "widgets_values": [widgets.get("text", "")]}
            if title:
                node["title"] = title
            self.nodes.append(node)
            return node_id
        values = []
        defaults = {name: (opts.get("default"), typ) for name, typ, opts in input_specs(type_name)}
        for name, control in widget_slots(type_name):
            if control:
                values.append("fixed")
                continue
            if name in widgets:
                values.append(widgets.pop(name))
            else:
                default, typ = defaults[name]
                values.append(default if default is not None or not isinstance(typ, list) else typ[0])
        if widgets:
            raise KeyError(f"{type_name} has no widgets {sorted(widgets)}")
        inputs = [{"name": name, "type": typ if isinstance(typ, str) else "COMBO", "link": None}
                  for name, typ, opts in input_specs(type_name) if not is_widget(typ, opts)]
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs_of(type_name))]
        node = {"id": node_id, "type": type_name, "pos": list(pos), "size": list(size), "flags": {}, "order": node_id - 1,
                "mode": 0, "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": type_name},
                "widgets_values": values}
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node_id

    def link(self, src: int, slot: int, dst: int, input_name: str) -> None:
        link_id = len(self.links) + 1
        out = self.nodes[src - 1]["outputs"][slot]
        target = next(i for i in self.nodes[dst - 1]["inputs"] if i["name"] == input_name)
        if target["link"] is not None:
            raise ValueError(f"input {input_name} of node {dst} is already linked")
        target["link"] = link_id
        out["links"].append(link_id)
        self.links.append([link_id, src, slot, dst, list(i["name"] for i in self.nodes[dst - 1]["inputs"]).index(input_name),
                           out["type"]])

    def to_json(self) -> dict:
        return {
            "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}, "title": self.title},
            "version": 0.4,
        }


# ---------------------------------------------------------------------------------------------
# UI format → API format, and loader swaps for tests


def to_api(workflow: dict) -> dict:
    """The prompt the executor runs, from a UI-format workflow (what the front end's graphToPrompt does)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in UI_ONLY or node.get("mode", 0) in (2, 4):
            continue
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values") or [])
        slots = widget_slots(node["type"])
        if len(values) != len(slots):
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values for {len(slots)} widgets {slots}")
        for (name, control), value in zip(slots, values):
            if not control:
                inputs[name] = value
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                link = links[inp["link"]]
                inputs[inp["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


TEST_LOADERS = {
    # stock loader → test loader of tiny models; outputs keep their order and types
    "CheckpointLoaderSimple": "DTITestTinyCheckpoint",
    "SanaCheckpointLoader": "DTITestTinySana",
    "GemmaLoader": "DTITestTinyGemma",
    "ExtraVAELoader": "DTITestTinySanaVAE",
    # separate model / text-encoder / VAE files (Flux.1, SD3.5 with its text encoders beside it)
    "UNETLoader": "DTITestTinyModel",
    "DualCLIPLoader": "DTITestTinyCLIP",
    "TripleCLIPLoader": "DTITestTinyCLIP",
    "VAELoader": "DTITestTinyVAE",
    "CLIPVisionLoader": "DTITestTinyClipVision",
}
FAMILY_LOADERS = ("DTITestTinyCheckpoint", "DTITestTinyModel", "DTITestTinyCLIP", "DTITestTinyVAE")


def swap_loaders(workflow: dict, family: str = "sdxl") -> dict:
    """A copy where each loader of real model files is the test-only loader of tiny models."""
    wf = json.loads(json.dumps(workflow))
    for node in wf["nodes"]:
        if node["type"] in TEST_LOADERS:
            node["type"] = TEST_LOADERS[node["type"]]
            node["widgets_values"] = ["tiny", family] if node["type"] in FAMILY_LOADERS else ["tiny"]
    return wf


def set_widgets(workflow: dict, node_type: str, **values: Any) -> dict:
    """Change widget values by name on every node of a type (e.g. fewer steps for a test run)."""
    for node in workflow["nodes"]:
        if node["type"] != node_type:
            continue
        slots = widget_slots(node_type)
        for name, value in values.items():
            index = slots.index((name, False))
            node["widgets_values"][index] = value
    return workflow


# ---------------------------------------------------------------------------------------------
# The shipped examples


def note(g: Graph, pos, text: str, size=(330, 240)) -> None:
    g.add("MarkdownNote", pos, size=size, text=text)


def sampler_tail(g: Graph, ckpt: int, positive: tuple[int, int], x: int, y: int, width: int, height: int, batch: int = 1,
                 steps: int = 25, prefix: str = "dti", negative: tuple[str, str, dict] | None = None,
                 latent_type: str = "EmptyLatentImage", sampler: tuple[str, str, float] = ("dpmpp_2m", "karras", 6.0),
                 sources: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None) -> None:
    """Negative prompt, empty latent, KSampler, VAE decode and save. ``sources``: (model, text encoder,
    vae) outputs when they do not all come from one checkpoint loader."""
    model_src, clip_src, vae_src = sources or ((ckpt, 0), (ckpt, 1), (ckpt, 2))
    neg_type, clip_input, neg_widgets = negative or ("CLIPTextEncode", "clip", {"text": "blurry, low quality"})
    neg = g.add(neg_type, (x, y), size=(360, 140), title="Negative prompt", **neg_widgets)
    g.link(clip_src[0], clip_src[1], neg, clip_input)
    latent = g.add(latent_type, (x, y + 190), size=(300, 110), width=width, height=height, batch_size=batch)
    ks = g.add("KSampler", (x + 400, y), size=(320, 270), seed=42, steps=steps, cfg=sampler[2], sampler_name=sampler[0],
               scheduler=sampler[1], denoise=1.0)
    g.link(model_src[0], model_src[1], ks, "model")
    g.link(positive[0], positive[1], ks, "positive")
    g.link(neg, 0, ks, "negative")
    g.link(latent, 0, ks, "latent_image")
    dec = g.add("VAEDecode", (x + 760, y), size=(220, 50))
    g.link(ks, 0, dec, "samples")
    g.link(vae_src[0], vae_src[1], dec, "vae")
    save = g.add("SaveImage", (x + 760, y + 100), size=(420, 420), filename_prefix=prefix)
    g.link(dec, 0, save, "images")


TRAIN_NODES = ("DTITrainConcept", "DTITrainOptions")


def train_nodes(g: Graph, pos: tuple[int, int], name: str, prompt: str, options_pos: tuple[int, int]) -> int:
    """DTI Train with a DTI Train Options node (every setting at its default) wired into it."""
    x, y = pos
    train = g.add("DTITrainConcept", (x, y), size=(380, 560), name=name, initializer="dog", prompt=prompt)
    # Beside, not below: DTI Train grows when a run adds its chart and summary.
    options = g.add("DTITrainOptions", options_pos, size=(360, 900))
    g.link(options, 0, train, "options")
    return train


def set_train_widgets(workflow: dict, **values: Any) -> dict:
    """set_widgets for DTI Train settings, each on whichever of DTI Train / DTI Train Options has it."""
    for node_type in TRAIN_NODES:
        names = {name for name, _control in widget_slots(node_type)}
        mine = {k: v for k, v in values.items() if k in names}
        set_widgets(workflow, node_type, **mine)
    return workflow


def checkpoint_train_graph(title: str, ckpt_name: str, concept: str, note_text: str, **tail) -> Graph:
    """A checkpoint loader and a photo folder feeding DTI Train, whose conditioning is sampled."""
    g = Graph(title)
    ckpt = g.add("CheckpointLoaderSimple", (40, 80), size=(330, 100), ckpt_name=ckpt_name)
    imgs = g.add("LoadImageSetFromFolderNode", (40, 240), size=(330, 90), folder="my_concept", resize_method="None")
    train = train_nodes(g, (420, 80), concept, "a photo of {} on a beach at sunset", options_pos=(40, 660))
    for i, name in enumerate(("model", "clip", "vae")):
        g.link(ckpt, i, train, name)
    g.link(imgs, 0, train, "images")
    plot = g.add("PreviewImage", (850, 640), size=(420, 320), title="Loss and norms")
    g.link(train, 2, plot, "images")
    summary = g.add("PreviewAny", (1300, 640), size=(420, 240), title="Training summary")
    g.link(train, 3, summary, "source")
    sampler_tail(g, ckpt, (train, 1), 850, 80, 1024, 1024, **tail)
    note(g, (40, 380), note_text + "\n\nMore settings (κ, batch, images, captions, checkpoints, saving) are on **DTI Train "
                                   "Options** beside it; -1 means the family default.")
    return g


def build_train_sdxl() -> Graph:
    return checkpoint_train_graph(
        "DTI: train an SDXL concept and sample with it", "sd_xl_base_1.0.safetensors", "my_concept",
        "**DTI Train** learns *my_concept* from the images in `input/my_concept/` (3–10 photos of one subject).\n\n"
        "Each token vector keeps CLIP's in-distribution norm m* and only its direction is trained. Defaults follow the "
        "paper (768², batch 4, 400 steps, angle 0.04/step, κ 1e-4). The concept is saved to "
        "`models/embeddings/my_concept.safetensors`; afterwards any prompt can use `embedding:my_concept`.",
        prefix="dti_train")


def build_load_and_sample() -> Graph:
    g = Graph("DTI: load a concept and sample")
    ckpt = g.add("CheckpointLoaderSimple", (40, 80), size=(330, 100), ckpt_name="sd_xl_base_1.0.safetensors")
    load = g.add("DTILoadEmbedding", (420, 80), size=(380, 260), embedding="my_concept.safetensors",
                 prompt="a watercolor painting of {} in a snowy forest")
    g.link(ckpt, 1, load, "clip")
    sampler_tail(g, ckpt, (load, 0), 850, 80, 1024, 1024, prefix="dti_load")
    note(g, (40, 380), "**DTI Load Embedding** reads DTI concepts and ordinary TI files (A1111 .pt, kohya, OneTrainer, "
                       "diffusers, official DTI). Write `{}` where the concept goes. Set *norm* to *rescale to m\\** to fix an "
                       "old TI embedding whose huge norm drowns the rest of the prompt.")
    return g


def build_slerp_strip() -> Graph:
    g = Graph("DTI: interpolation strip between two concepts")
    ckpt = g.add("CheckpointLoaderSimple", (40, 80), size=(330, 100), ckpt_name="sd_xl_base_1.0.safetensors")
    a = g.add("DTILoadEmbedding", (420, 40), size=(380, 240), title="Concept A", embedding="concept_a.safetensors")
    b = g.add("DTILoadEmbedding", (420, 320), size=(380, 240), title="Concept B", embedding="concept_b.safetensors")
    g.link(ckpt, 1, a, "clip")
    g.link(ckpt, 1, b, "clip")
    slerp = g.add("DTISlerpConcepts", (850, 40), size=(380, 330), prompt="a photo of {} on a beach", t=0.5, t_values="0:1:5")
    g.link(ckpt, 1, slerp, "clip")
    g.link(a, 1, slerp, "concept_a")
    g.link(b, 1, slerp, "concept_b")
    save = g.add("DTISaveConcept", (850, 420), size=(380, 110), name="halfway_blend")
    g.link(slerp, 1, save, "concept")
    sampler_tail(g, ckpt, (slerp, 0), 1280, 40, 1024, 1024, batch=5, prefix="dti_strip")
    note(g, (40, 240), "**DTI Slerp Concepts** moves each vector along the great circle between two concepts at fixed norm. "
                       "`t_values` = `0:1:5` gives five conditionings in one batch: the latent batch size (5) must match, "
                       "and one KSampler run renders the whole strip. *DTI Save Concept* keeps the t = 0.5 blend.")
    return g


def build_inspect() -> Graph:
    g = Graph("DTI: inspect an ordinary TI embedding next to a DTI concept")
    ckpt = g.add("CheckpointLoaderSimple", (40, 80), size=(330, 100), ckpt_name="sd_xl_base_1.0.safetensors")
    ti = g.add("DTINormInspector", (420, 40), size=(380, 160), title="Ordinary TI embedding",
               embedding="my_ti_embedding.safetensors", k=8)
    g.link(ckpt, 1, ti, "clip")
    # The second row starts well below the first: an inspector grows by its report and histogram when it runs.
    load = g.add("DTILoadEmbedding", (40, 820), size=(330, 240), embedding="my_concept.safetensors")
    g.link(ckpt, 1, load, "clip")
    dti = g.add("DTINormInspector", (420, 820), size=(380, 160), title="DTI concept", k=8)
    g.link(ckpt, 1, dti, "clip")
    g.link(load, 1, dti, "concept")
    for i, node in enumerate((ti, dti)):
        view = g.add("PreviewImage", (850, 40 + 780 * i), size=(520, 420))
        g.link(node, 1, view, "images")
        text = g.add("PreviewAny", (1400, 40 + 780 * i), size=(520, 420))
        g.link(node, 0, text, "source")
    note(g, (40, 220), "**DTI Norm Inspector**: an ordinary TI vector sits far above the vocabulary's norms; its Euclidean "
                       "neighbours are just large tokens, and after the first LayerNorm its position signal is gone. The DTI "
                       "concept sits at m*, keeps its position signal, and its cosine neighbours say what it means.")
    return g


def build_train_lumina2() -> Graph:
    return checkpoint_train_graph(
        "DTI: train a Lumina 2 concept (Gemma-2-2B) and sample with it", "lumina_2.safetensors", "my_concept_lumina2",
        "**DTI Train on Lumina 2.** The concept lives in Gemma-2's raw token space at its m*. Family defaults follow the "
        "SANA reference (1024², batch 2 × 2 accumulation, 500 steps, κ 5e-5). Every prompt gets Lumina 2's 'superior' "
        "system prompt, in training and in the conditioning alike. ComfyUI's Gemma prompts ignore `embedding:`, so use "
        "the concept through DTI Load Embedding.",
        prefix="dti_lumina2", latent_type="EmptySD3LatentImage",
        negative=("CLIPTextEncodeLumina2", "clip", {"system_prompt": "superior", "user_prompt": "blurry, low quality"}),
        sampler=("res_multistep", "simple", 4.0))


def build_train_sana() -> Graph:
    g = Graph("DTI: train a SANA concept (ComfyUI_ExtraModels) and sample with it")
    sana = g.add("SanaCheckpointLoader", (40, 80), size=(360, 160), ckpt_name="Efficient-Large-Model/SANA1.5_1.6B_1024px",
                 model="SanaMS1.5_1600M_P1_D20", dtype="BF16", enable_cfg_passthrough=True)
    gemma = g.add("GemmaLoader", (40, 290), size=(360, 130), model_name="Efficient-Large-Model/gemma-2-2b-it",
                  device="cuda", dtype="BF16")
    vae = g.add("ExtraVAELoader", (40, 470), size=(360, 130), vae_name="mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers")
    imgs = g.add("LoadImageSetFromFolderNode", (40, 650), size=(360, 90), folder="my_concept", resize_method="None")
    train = train_nodes(g, (450, 80), "my_concept_sana", "a photo of {} on a beach at sunset", options_pos=(40, 1090))
    g.link(sana, 0, train, "model")
    g.link(gemma, 0, train, "clip")
    g.link(vae, 0, train, "vae")
    g.link(imgs, 0, train, "images")
    summary = g.add("PreviewAny", (880, 640), size=(420, 240), title="Training summary")
    g.link(train, 3, summary, "source")
    sampler_tail(g, sana, (train, 1), 880, 80, 1024, 1024, prefix="dti_sana", latent_type="EmptySanaLatentImage",
                 negative=("SanaTextEncode", "GEMMA", {"text": "blurry, low quality"}), sampler=("euler", "simple", 4.5),
                 steps=20, sources=((sana, 0), (gemma, 0), (vae, 0)))
    note(g, (40, 790), "**DTI Train on SANA** through ComfyUI_ExtraModels: its checkpoint, Gemma and DC-AE loaders feed "
                       "the same DTI Train node (the text-encoder socket takes GEMMA). Training prompts get SANA's "
                       "'complex human instruction', as SanaTextEncode adds it when sampling. Use the concept through DTI "
                       "Load Embedding.", size=(360, 260))
    return g


def t5_train_graph(title: str, loaders, concept: str, note_text: str, guidance: float | None, sampler, steps: int) -> Graph:
    """Separate model, text-encoder and VAE loaders feeding DTI Train, whose conditioning is sampled.
    ``loaders(g)`` adds the loaders and returns ((model node, slot), (clip node, slot), (vae node, slot))."""
    g = Graph(title)
    model_src, clip_src, vae_src = loaders(g)
    imgs = g.add("LoadImageSetFromFolderNode", (40, 620), size=(360, 90), folder="my_concept", resize_method="None")
    train = train_nodes(g, (450, 80), concept, "a photo of {} on a beach at sunset", options_pos=(40, 1100))
    for (node, slot), name in zip((model_src, clip_src, vae_src), ("model", "clip", "vae")):
        g.link(node, slot, train, name)
    g.link(imgs, 0, train, "images")
    plot = g.add("PreviewImage", (880, 640), size=(420, 320), title="Loss and norms")
    g.link(train, 2, plot, "images")
    summary = g.add("PreviewAny", (1330, 640), size=(420, 240), title="Training summary")
    g.link(train, 3, summary, "source")
    positive = (train, 1)
    if guidance is not None:
        fg = g.add("FluxGuidance", (880, 500), size=(300, 60), guidance=guidance)
        g.link(train, 1, fg, "conditioning")
        positive = (fg, 0)
    sampler_tail(g, model_src[0], positive, 880, 80, 1024, 1024, prefix=concept, latent_type="EmptySD3LatentImage",
                 sampler=sampler, steps=steps, sources=(model_src, clip_src, vae_src))
    note(g, (40, 760), note_text, size=(360, 300))
    return g


def build_train_flux() -> Graph:
    def loaders(g: Graph):
        unet = g.add("UNETLoader", (40, 80), size=(360, 90), unet_name="flux1-dev.safetensors", weight_dtype="default")
        clip = g.add("DualCLIPLoader", (40, 220), size=(360, 130), clip_name1="clip_l.safetensors",
                     clip_name2="t5xxl_fp16.safetensors", type="flux")
        vae = g.add("VAELoader", (40, 400), size=(360, 60), vae_name="ae.safetensors")
        return (unet, 0), (clip, 0), (vae, 0)

    return t5_train_graph(
        "DTI: train a Flux.1 concept (CLIP-L + T5-XXL) and sample with it", loaders, "my_concept_flux",
        "**DTI Train on Flux.1** learns one direction per encoder: CLIP-L (its pooled vector conditions Flux) and "
        "T5-XXL (the sequence the DiT attends to), each at its own m*. Flux dev is trained at guidance 1.0, as the "
        "usual Flux trainers do; sample with FluxGuidance 3.5 as usual. Defaults: 1024², batch 2 × 2, 500 steps, "
        "angle 0.04/step, κ 5e-5. The saved file has `clip_l` and `t5xxl` rows, so `embedding:my_concept_flux` works "
        "in any stock prompt.",
        guidance=3.5, sampler=("euler", "simple", 1.0), steps=20)


def build_train_sd35() -> Graph:
    def loaders(g: Graph):
        ckpt = g.add("CheckpointLoaderSimple", (40, 80), size=(360, 100), ckpt_name="sd3.5_medium.safetensors")
        clip = g.add("TripleCLIPLoader", (40, 230), size=(360, 130), clip_name1="clip_l.safetensors",
                     clip_name2="clip_g.safetensors", clip_name3="t5xxl_fp16.safetensors")
        return (ckpt, 0), (clip, 0), (ckpt, 2)

    return t5_train_graph(
        "DTI: train an SD3.5 concept (CLIP-L + CLIP-G + T5-XXL) and sample with it", loaders, "my_concept_sd35",
        "**DTI Train on SD3.5** learns one direction per encoder — CLIP-L, CLIP-G and T5-XXL — each at its own m*, "
        "with SD3's flow-matching loss and shift. Defaults: 1024², batch 2 × 2, 500 steps, angle 0.04/step, κ 5e-5. "
        "The saved file has `clip_l`, `clip_g` and `t5xxl` rows, so `embedding:my_concept_sd35` works in any stock "
        "prompt.",
        guidance=None, sampler=("euler", "sgm_uniform", 4.5), steps=28)




def build_score_ti_vs_dti() -> Graph:
    g = Graph("DTI: train one subject with TI and with DTI, watch both, score both")
    ckpt = g.add("CheckpointLoaderSimple", (40, 40), size=(330, 100), ckpt_name="sd_xl_base_1.0.safetensors")
    imgs = g.add("LoadImageSetFromFolderNode", (40, 180), size=(330, 90), folder="my_concept", resize_method="None")
    vision = g.add("CLIPVisionLoader", (40, 310), size=(330, 80), clip_name="CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors")
    options = g.add("DTITrainOptions", (40, 440), size=(330, 900), preview_every=50)
    neg = g.add("CLIPTextEncode", (1210, 1220), size=(380, 120), title="Negative prompt", text="blurry, low quality")
    g.link(ckpt, 1, neg, "clip")
    latent = g.add("EmptyLatentImage", (1630, 1220), size=(380, 110), width=1024, height=1024, batch_size=4)
    for row, (method, name) in enumerate((("ti", "my_concept_ti"), ("dti", "my_concept_dti"))):
        y = 40 + row * 590
        train = g.add("DTITrainConcept", (420, y), size=(380, 520), title=f"DTI Train ({method})", name=name,
                      initializer="dog", prompt="a photo of {} on a beach at sunset", method=method)
        for i, socket in enumerate(("model", "clip", "vae")):
            g.link(ckpt, i, train, socket)
        g.link(imgs, 0, train, "images")
        g.link(options, 0, train, "options")
        ks = g.add("KSampler", (850, y), size=(320, 270), seed=42, steps=25, cfg=6.0, sampler_name="dpmpp_2m",
                   scheduler="karras", denoise=1.0)
        g.link(ckpt, 0, ks, "model")
        g.link(train, 1, ks, "positive")
        g.link(neg, 0, ks, "negative")
        g.link(latent, 0, ks, "latent_image")
        frames = g.add("PreviewImage", (850, y + 310), size=(320, 230), title=f"Previews while training ({method})")
        g.link(train, 4, frames, "images")
        dec = g.add("VAEDecode", (1210, y), size=(220, 50))
        g.link(ks, 0, dec, "samples")
        g.link(ckpt, 2, dec, "vae")
        save = g.add("SaveImage", (1210, y + 90), size=(380, 450), filename_prefix=f"dti_score_{method}")
        g.link(dec, 0, save, "images")
        score = g.add("DTIConceptScore", (1630, y), size=(380, 200), title=f"Score ({method})",
                      prompts="a photo of a dog on a beach at sunset")
        g.link(dec, 0, score, "generated")
        g.link(imgs, 0, score, "reference")
        g.link(vision, 0, score, "clip_vision")
        g.link(ckpt, 1, score, "clip")
        table = g.add("PreviewAny", (1630, y + 250), size=(380, 290), title=f"{method.upper()} scores")
        g.link(score, 2, table, "source")
    note(g, (420, 1220), "One subject, two methods: **ti** (plain textual inversion) and **dti** share one **DTI Train "
                         "Options** (previews every 50 steps: watch each concept form on its node). Four samples of each "
                         "are scored against the training photos with the same CLIP ViT-bigG vision model: **CLIP-I** "
                         "(image similarity) and **CLIP-T** (text alignment with SDXL's CLIP-G; the prompt names the class "
                         "word, not the concept). DTI should keep CLIP-T high where TI's oversized vectors drown the prompt.",
         size=(750, 160))
    return g


EXAMPLES = {
    "dti_train_sdxl": build_train_sdxl,
    "dti_load_and_sample": build_load_and_sample,
    "dti_slerp_strip": build_slerp_strip,
    "dti_inspect_ti_vs_dti": build_inspect,
    "dti_train_lumina2": build_train_lumina2,
    "dti_train_sana": build_train_sana,
    "dti_train_flux": build_train_flux,
    "dti_train_sd35": build_train_sd35,
    "dti_score_ti_vs_dti": build_score_ti_vs_dti,
}
FAMILY = {"dti_train_lumina2": "lumina2", "dti_train_sana": "sana", "dti_train_flux": "flux",
          "dti_train_sd35": "sd3"}  # the rest are SDXL
NEEDS_EXTRAMODELS = {"dti_train_sana"}


def write_examples(names: list[str] | None = None) -> list[Path]:
    WORKFLOWS.mkdir(exist_ok=True)
    written = []
    for name, build in EXAMPLES.items():
        if names and name not in names:
            continue
        if name in NEEDS_EXTRAMODELS and tiny_comfy_extramodels() is None:
            print(f"skipped {name}: ComfyUI_ExtraModels is not installed beside ComfyUI")
            continue
        path = WORKFLOWS / f"{name}.json"
        path.write_text(json.dumps(build().to_json(), indent=1, ensure_ascii=False) + "\n")
        written.append(path)
    return written


def tiny_comfy_extramodels():
    import tiny_comfy

    return tiny_comfy.extramodels_path()


def _load_comfy_with_pack() -> None:
    import asyncio

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import comfy_harness
    import tiny_comfy

    tiny_comfy.import_comfy(tiny_comfy.find_comfyui())
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    asyncio.run(nodes.load_custom_node(str(tiny_comfy.PACK_ROOT)))
    if tiny_comfy.extramodels_path() is not None:
        tiny_comfy.load_extramodels(tiny_comfy.extramodels_path())
    comfy_harness.register_test_nodes()


if __name__ == "__main__":
    _load_comfy_with_pack()
    for p in write_examples(sys.argv[1:] or None):
        print("wrote", p)
