"""DTI Train and DTI Train Options: learn a concept from images with the MODEL, CLIP and VAE already loaded.

DTI Train shows what most users change; every other setting sits on DTI Train Options, wired into
its optional ``options`` input (unconnected = the family's defaults). One options node can feed
several trainings, e.g. a TI and a DTI run of the same subject. Graphs saved with the first
version of DTI Train (29 inputs on one node) keep working through DTI Train (legacy).
"""

from __future__ import annotations

import comfy.samplers
import torch

from ..adapters.folders import checkpoint_choices, checkpoints_folder
from ..adapters.plots import to_image_tensor
from ..adapters.session import train_concept
from ..dti.families import FAMILIES, defaults_by_family
from ..dti.optim import METHODS, TI_ADAMW_LR
from ..dti.settings import (
    DEFAULT,
    FIELD_NAMES,
    MAGNITUDES,
    MAX_CHECKPOINTS,
    MAX_VECTORS,
    ON_EXISTS,
    PRECISIONS,
    RESIZE_MODES,
    TEMPLATE_SETS,
    TrainSettings,
)
from . import validation
from .api import io, ui
from .types import DTIConcept, one, text_encoder_input
from .types import DTITrainOptions as OptionsSocket

NO_RESUME = "none"
_D = TrainSettings()  # the defaults the inputs show


# -- inputs, one factory per setting (shared by DTI Train, its options node and the legacy node) ------

def _family_default(setting: str, sentinel: float) -> str:
    return f" {sentinel:g} uses the family default ({defaults_by_family(setting)})."


def in_steps(sentinel: int = DEFAULT) -> io.Int.Input:
    return io.Int.Input("steps", default=sentinel, min=sentinel, max=100000,
                        tooltip="Optimizer steps." + _family_default("steps", sentinel))


def in_learning_rate(sentinel: float = DEFAULT) -> io.Float.Input:
    return io.Float.Input("learning_rate", default=sentinel, min=sentinel, max=1.5, step=0.001,
                          tooltip="dti: the angle (radians) each vector turns per step — the reference's 0.01 × batch 4 = 0.04. "
                                  f"AdamW methods: the AdamW rate (default {TI_ADAMW_LR:g})." + _family_default("lr", sentinel))


def in_resolution(sentinel: int = DEFAULT) -> io.Int.Input:
    return io.Int.Input("resolution", default=sentinel, min=sentinel, max=4096,
                        tooltip="Training resolution (square crops)." + _family_default("resolution", sentinel))


def in_kappa() -> io.Float.Input:
    return io.Float.Input("kappa", default=DEFAULT, min=DEFAULT, max=10.0, step=0.00001,
                          tooltip="Concentration of the vMF prior pulling toward the initializer; 0 disables the prior."
                                  + _family_default("kappa", DEFAULT))


def in_batch_size(sentinel: int = DEFAULT) -> io.Int.Input:
    return io.Int.Input("batch_size", default=sentinel, min=sentinel, max=64,
                        tooltip="Images per step." + _family_default("batch_size", sentinel))


def in_grad_accum(sentinel: int = DEFAULT) -> io.Int.Input:
    return io.Int.Input("grad_accum", default=sentinel, min=sentinel, max=64,
                        tooltip="Micro-batches accumulated per step." + _family_default("grad_accum", sentinel))


def in_vectors(sentinel: int = DEFAULT) -> io.Int.Input:
    return io.Int.Input("vectors", default=sentinel, min=sentinel, max=MAX_VECTORS,
                        tooltip=f"Vectors per encoder, at most {MAX_VECTORS}. {sentinel}: one per initializer sub-token. "
                                "More than the sub-tokens repeats the initializer rows; fewer is refused.")


def common_option_inputs() -> list:
    """Options whose meaning never changed (their order is the legacy node's)."""
    return [
        io.Combo.Input("magnitude", options=list(MAGNITUDES), default=_D.magnitude,
                       tooltip="m*, the fixed norm of every vector: a statistic of the encoder's vocabulary norms, or custom."),
        io.Float.Input("magnitude_value", default=_D.magnitude_value, min=0.0001, max=100.0, step=0.0001,
                       tooltip="The norm used when magnitude is 'custom'."),
    ]


def image_option_inputs() -> list:
    return [
        io.Combo.Input("resize", options=list(RESIZE_MODES), default=_D.resize,
                       tooltip="'resize and crop' scales each image's short side to the resolution (mixed sizes are fine); "
                               "'keep size' trains at the images' own size, which must be the same for all."),
        io.Boolean.Input("random_crop", default=_D.random_crop, tooltip="Random instead of centered crops."),
        io.Boolean.Input("flip", default=_D.flip, tooltip="Randomly mirror images (both versions are encoded once)."),
        # Not called "seed": the front end gives "seed" inputs a randomize-after-queue control by
        # default, which would retrain on every Queue.
        io.Int.Input("training_seed", default=_D.seed, min=0, max=0xFFFFFFFF,
                     tooltip="Seed for noise, timesteps, crops and templates; fixed, so queuing again reuses the result."),
        io.Combo.Input("templates", options=list(TEMPLATE_SETS), default=_D.templates,
                       tooltip="Training prompts: the 27 ImageNet object templates or the style templates."),
        io.String.Input("captions", multiline=True, default=_D.captions,
                        tooltip="Optional: one caption per line (one per image, or a single line for all) with {} where "
                                "the concept goes; replaces the templates."),
    ]


def run_option_inputs() -> list:
    return [
        io.Combo.Input("precision", options=list(PRECISIONS), default=_D.precision,
                       tooltip="UNet compute dtype while training. auto: bf16 (or fp32) when the model runs in fp16, "
                               "whose gradients underflow. Vectors and optimizer state are always fp32."),
        io.Boolean.Input("gradient_checkpointing", default=_D.gradient_checkpointing,
                         tooltip="Recompute UNet activations in backward: less memory, slower steps."),
        io.Int.Input("checkpoint_every", default=_D.checkpoint_every, min=0, max=100000,
                     tooltip="Write a resumable checkpoint (vectors + optimizer state) every N steps; 0 = never. "
                             f"At most {MAX_CHECKPOINTS} per run."),
        io.Combo.Input("resume", options=[NO_RESUME, *checkpoint_choices()], default=NO_RESUME,
                       tooltip="Continue a run from one of its checkpoints (output/dti_checkpoints)."),
        io.Boolean.Input("save", default=_D.save, tooltip="Save the concept to the embeddings folder when training ends."),
        io.Combo.Input("if_exists", options=list(ON_EXISTS), default=_D.on_exists,
                       tooltip="When the file exists: increment (name_2, …; avoids stale CLIPTextEncode caches), "
                               "overwrite, or stop with an error."),
    ]


FAMILY_DEFAULT = "default"  # preview sampler/scheduler combos: the family's choice


def preview_option_inputs() -> list:
    """Preview sampling while training (optional sockets, so graphs saved before them stay valid)."""
    fam = "; -1: the family default"
    return [
        io.Int.Input("preview_every", default=_D.preview_every, min=0, max=100000, optional=True,
                     tooltip="Sample the concept every N steps (and at the last step) and show the frame on the node; "
                             "0 = no previews. Previews never change the training."),
        io.String.Input("preview_prompt", multiline=True, default=_D.preview_prompt, optional=True,
                        tooltip="Prompt of the preview frames, {} or embedding:name where the concept goes; empty = DTI Train's prompt."),
        io.Int.Input("preview_steps", default=DEFAULT, min=DEFAULT, max=200, optional=True,
                     tooltip="Sampling steps per frame" + fam + " (20)."),
        io.Float.Input("preview_cfg", default=DEFAULT, min=DEFAULT, max=30.0, step=0.1, optional=True,
                       tooltip="CFG of the frames" + fam + " (SDXL 6, SD1 7, Lumina 2 4, SANA 4.5)."),
        io.Combo.Input("preview_sampler", options=[FAMILY_DEFAULT, *comfy.samplers.KSampler.SAMPLERS], default=FAMILY_DEFAULT,
                       optional=True,
                       tooltip="Sampler of the frames; default: dpmpp_2m (SDXL, SD1), res_multistep (Lumina 2), euler (SANA)."),
        io.Combo.Input("preview_scheduler", options=[FAMILY_DEFAULT, *comfy.samplers.KSampler.SCHEDULERS],
                       default=FAMILY_DEFAULT, optional=True,
                       tooltip="Scheduler of the frames; default: karras (SDXL, SD1), simple (Lumina 2, SANA)."),
        io.Int.Input("preview_width", default=DEFAULT, min=DEFAULT, max=4096, optional=True,
                     tooltip="Frame width in pixels" + fam + " (SDXL, Gemma models 1024, SD1 512)."),
        io.Int.Input("preview_height", default=DEFAULT, min=DEFAULT, max=4096, optional=True,
                     tooltip="Frame height in pixels" + fam + "."),
        io.Int.Input("preview_seed", default=_D.preview_seed, min=0, max=0xFFFFFFFF, optional=True,
                     tooltip="Noise seed of every frame: fixed, so frames of different steps (and runs) compare."),
    ]


def main_inputs() -> list:
    return [
        io.Model.Input("model", tooltip=f"The diffusion model to train against ({', '.join(f.short for f in FAMILIES.values())}). "
                               "It is not modified."),
        text_encoder_input("The text encoder of the same checkpoint; the concept gets one vector per sub-encoder"),
        io.Vae.Input("vae", tooltip="Encodes the training images once, before training starts."),
        io.Image.Input("images", tooltip="Training images (a batch, or a list of batches of any sizes)."),
        io.String.Input("name", default=_D.name,
                        tooltip="File name of the concept in the embeddings folder; prompts use it as embedding:name."),
        io.String.Input("initializer", default=_D.initializer,
                        tooltip="A word close to the concept ('dog', 'teapot', 'watercolor'). Its token(s) start the training "
                                f"and are the prior's mean; one vector per sub-token, at most {MAX_VECTORS} sub-tokens."),
        io.String.Input("prompt", multiline=True, default="a photo of {} on a beach",
                        tooltip="Prompt for the CONDITIONING output; write {} or embedding:name where the concept goes."),
        io.Combo.Input("method", options=list(METHODS), default=_D.method,
                       tooltip="dti: direction on the sphere at norm m* (the paper). ti: plain textual inversion (AdamW). "
                               "ti_rescaled: ti, then rows rescaled to m*. crossinit: ti from the encoder's output."),
    ]


def _outputs() -> list:
    return [
        DTIConcept.Output(display_name="concept", tooltip="The learned concept, for the other DTI nodes."),
        io.Conditioning.Output(display_name="conditioning", tooltip="The prompt encoded with the learned concept."),
        io.Image.Output(display_name="plot", tooltip="Loss and per-encoder norm over the steps."),
        io.String.Output(display_name="summary", tooltip="What was trained, the numbers, and where it was saved."),
        io.Image.Output(display_name="previews",
                        tooltip="The preview frames, one per preview step, as a batch; a 1×1 black image when previews are off."),
    ]


DESCRIPTION = (
    "Learns a concept from a few images with Directional Textual Inversion: each token vector keeps the encoder's "
    "in-distribution norm m* and only its direction is trained (Riemannian SGD with a von Mises–Fisher prior toward "
    "the initializer). Uses the loaded MODEL, CLIP and VAE."
)

# Node input name → settings field, where they differ.
INPUT_TO_FIELD = {"learning_rate": "lr", "training_seed": "seed", "if_exists": "on_exists"}


def settings_from_inputs(values: dict) -> TrainSettings:
    """The settings object from node input values (by input name); 'none' resume means no resume."""
    out = {}
    for key, value in values.items():
        field = INPUT_TO_FIELD.get(key, key)
        if field in FIELD_NAMES:
            out[field] = value
    for key in ("preview_sampler", "preview_scheduler"):
        if out.get(key) == FAMILY_DEFAULT:
            out[key] = ""
    resume = out.get("resume")
    out["resume"] = None if resume in (None, NO_RESUME) else str(checkpoints_folder() / resume)
    if "name" in out:
        out["name"] = str(out["name"]).strip()
    return TrainSettings(**out)


def run_training(cls, model, clip, vae, images, settings: TrainSettings, prompt: str, previews: bool = True) -> io.NodeOutput:
    session = train_concept(model, clip, vae, images, settings, node_id=cls.hidden.unique_id, prompt=prompt)
    conditioning = session.encoder.conditioning(session.settings.name, prompt, session.concept.vectors())
    plot = to_image_tensor(session.plot)
    outputs = [session.concept, conditioning, plot, session.summary]
    if previews:
        outputs.append(session.previews.strip() if session.previews is not None else torch.zeros(1, 1, 1, 3))
    # The node shows the live chart (web extension) and the summary; the plot stays an output.
    return io.NodeOutput(*outputs, ui=ui.PreviewText(session.summary))


class DTITrainOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DTITrainOptions",
            display_name="DTI Train Options",
            category="DTI",
            description=("Every DTI Train setting that is not on the node itself: the prior, m*, batching, images, "
                         "prompts, precision, checkpoints, saving and preview frames while training. Connect it to DTI Train's "
                         "options input; "
                         f"{DEFAULT} means the model family's default."),
            inputs=[in_kappa(),
                    io.Float.Input("beta", default=_D.beta, min=0.0, max=0.999, step=0.001,
                                   tooltip="0 (the paper's default): every step turns each vector by exactly the learning rate. "
                                           "Above 0: the step is normalized by an EMA of the gradient norm instead."),
                    *common_option_inputs(), in_batch_size(), in_grad_accum(), *image_option_inputs(), in_vectors(),
                    *run_option_inputs(), *preview_option_inputs()],
            outputs=[OptionsSocket.Output(display_name="options", tooltip="Connect to DTI Train's options input.")],
        )

    @classmethod
    def validate_inputs(cls, kappa, beta, magnitude, magnitude_value, resize, templates, precision, resume, if_exists,
                        preview_cfg=None, preview_sampler=None, preview_scheduler=None) -> bool | str:
        return validation.check(cls, {"kappa": kappa, "beta": beta, "magnitude": magnitude, "magnitude_value": magnitude_value,
                                      "resize": resize, "templates": templates, "precision": precision, "resume": resume,
                                      "if_exists": if_exists, "preview_cfg": preview_cfg, "preview_sampler": preview_sampler,
                                      "preview_scheduler": preview_scheduler})

    @classmethod
    def execute(cls, **values) -> io.NodeOutput:
        return io.NodeOutput(dict(values))


class _TrainNode(io.ComfyNode):
    """What DTI Train and its legacy form share: the schema's frame and the run."""

    PREVIEWS = True  # the previews output (the legacy node's saved graphs know four outputs)

    @classmethod
    def schema(cls, node_id: str, display_name: str, description: str, inputs: list, deprecated: bool = False) -> io.Schema:
        return io.Schema(node_id=node_id, display_name=display_name, category="DTI", description=description,
                         is_experimental=True, is_output_node=True, is_input_list=True, is_deprecated=deprecated,
                         inputs=inputs, outputs=_outputs() if cls.PREVIEWS else _outputs()[:4],
                         hidden=[io.Hidden.unique_id])

    @classmethod
    def run(cls, model, clip, vae, images, prompt, values: dict) -> io.NodeOutput:
        settings = settings_from_inputs({k: one(v) for k, v in values.items()})
        return run_training(cls, one(model), one(clip), one(vae), images, settings, one(prompt), previews=cls.PREVIEWS)


class DTITrain(_TrainNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            "DTITrainConcept", "DTI Train", DESCRIPTION + " More settings: connect DTI Train Options.",
            [*main_inputs(), in_steps(), in_learning_rate(), in_resolution(),
             OptionsSocket.Input("options", optional=True,
                                 tooltip="DTI Train Options; unconnected, every other setting is the family default.")],
        )

    @classmethod
    def validate_inputs(cls, name, initializer, prompt, method, learning_rate) -> bool | str:
        checks = validation.train_checks(name, initializer, prompt)
        return validation.check(cls, {"method": method, "learning_rate": learning_rate}, *checks)

    @classmethod
    def execute(cls, model, clip, vae, images, prompt, options=None, **values) -> io.NodeOutput:
        return cls.run(model, clip, vae, images, prompt, {**(one(options) or {}), **values})


class DTITrainLegacy(_TrainNode):
    """The first DTI Train (node id DTITrain), kept so saved graphs load and run with the same meaning.

    Its number inputs used 0 (kappa: -1) for "family default"; they are mapped to DEFAULT here.
    """

    PREVIEWS = False
    LEGACY_ZERO_IS_DEFAULT = ("steps", "learning_rate", "batch_size", "grad_accum", "resolution", "vectors")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            "DTITrain", "DTI Train (legacy, all settings on one node)",
            DESCRIPTION + " Kept for graphs saved with the first version; new graphs use DTI Train + DTI Train Options.",
            [*main_inputs(), in_steps(0), in_learning_rate(0.0), in_kappa(), *common_option_inputs(),
             in_batch_size(0), in_grad_accum(0), in_resolution(0), *image_option_inputs(), in_vectors(0),
             *run_option_inputs()],
            deprecated=True,
        )

    @classmethod
    def validate_inputs(cls, name, initializer, prompt, method, learning_rate, kappa, magnitude, magnitude_value, resize,
                        templates, precision, resume, save, if_exists) -> bool | str:
        values = {"method": method, "learning_rate": learning_rate, "kappa": kappa, "magnitude": magnitude,
                  "magnitude_value": magnitude_value, "resize": resize, "templates": templates, "precision": precision,
                  "resume": resume, "if_exists": if_exists}
        checks = validation.train_checks(name, initializer, prompt)
        if validation.first(name) is not None and validation.first(if_exists) is not None:
            checks.append(lambda: validation.existing_file_problem(validation.first(name), validation.first(if_exists),
                                                                    validation.first(save) is not False))
        return validation.check(cls, values, *checks)

    @classmethod
    def execute(cls, model, clip, vae, images, prompt, **values) -> io.NodeOutput:
        values = {k: one(v) for k, v in values.items()}
        for key in cls.LEGACY_ZERO_IS_DEFAULT:
            if values.get(key) == 0:
                values[key] = DEFAULT
        return cls.run(model, clip, vae, images, prompt, values)
