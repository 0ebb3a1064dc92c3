"""DTI Train: learn a concept from images with the MODEL, CLIP and VAE already loaded."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..dti import formats, magnitude
from ..dti.optim import METHODS, TI_ADAMW_LR
from ..dti.trainer import TEMPLATES
from . import host
from .images import RESIZE_MODES
from .plots import to_image_tensor
from .session import PRECISIONS, TrainRequest, train_concept
from .text_encoders import text_encoder
from .types import DTIConcept, text_encoder_input

MAGNITUDES = (*magnitude.POLICIES, "custom")
ON_EXISTS = ("increment", "overwrite", "error")
NO_RESUME = "none"


def _resume_choices() -> list[str]:
    root = host.checkpoints_folder()
    files = formats.list_embedding_files([str(root)]) if root.is_dir() else []
    return [NO_RESUME] + [f for f in files if f.endswith(".safetensors")]


def _one(value):
    """This node takes whole lists (is_input_list) so that list-shaped image inputs train once;
    every other input is a single value wrapped in a list."""
    return value[0] if isinstance(value, list) else value


class DTITrain(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DTITrain",
            display_name="DTI Train",
            category="DTI",
            description=(
                "Learns a concept from a few images with Directional Textual Inversion: each token vector keeps "
                "the encoder's in-distribution norm m* and only its direction is trained (Riemannian SGD with a "
                "von Mises–Fisher prior toward the initializer). Uses the loaded MODEL, CLIP and VAE."
            ),
            is_experimental=True,
            is_output_node=True,
            is_input_list=True,
            inputs=[
                io.Model.Input("model",
                               tooltip="The diffusion model to train against (SDXL, SD1.x, Lumina 2 or SANA). It is not modified."),
                text_encoder_input("The text encoder of the same checkpoint; the concept gets one vector per sub-encoder"),
                io.Vae.Input("vae", tooltip="Encodes the training images once, before training starts."),
                io.Image.Input("images", tooltip="Training images (a batch, or a list of batches of any sizes)."),
                io.String.Input("name", default="my_concept",
                                tooltip="File name of the concept in the embeddings folder; prompts use it as embedding:name."),
                io.String.Input("initializer", default="dog",
                                tooltip="A word close to the concept ('dog', 'teapot', 'watercolor'). Its token(s) start the "
                                        "training and are the prior's mean; one vector per sub-token."),
                io.String.Input("prompt", multiline=True, default="a photo of {} on a beach",
                                tooltip="Prompt for the CONDITIONING output; write {} or embedding:name where the concept goes."),
                io.Combo.Input("method", options=list(METHODS), default="dti",
                               tooltip="dti: direction on the sphere at norm m* (the paper). ti: plain textual inversion (AdamW). "
                                       "ti_rescaled: ti, then rows rescaled to m*. crossinit: ti from the encoder's output."),
                io.Int.Input("steps", default=0, min=0, max=100000,
                             tooltip="Optimizer steps; 0 uses the family default (SDXL/SD1 400, Gemma models 500)."),
                io.Float.Input("learning_rate", default=0.0, min=0.0, max=1.5, step=0.001,
                               tooltip="dti: the angle (radians) each vector turns per step — the reference's 0.01 × batch 4 = "
                                       f"0.04. AdamW methods: the AdamW rate (default {TI_ADAMW_LR:g}). 0 uses the default."),
                io.Float.Input("kappa", default=-1.0, min=-1.0, max=10.0, step=0.00001,
                               tooltip="Concentration of the vMF prior pulling toward the initializer (SDXL 1e-4, Gemma 5e-5); "
                                       "-1 uses the family default, 0 disables the prior."),
                io.Combo.Input("magnitude", options=list(MAGNITUDES), default="mean",
                               tooltip="m*, the fixed norm of every vector: a statistic of the encoder's vocabulary norms, or custom."),
                io.Float.Input("magnitude_value", default=0.4, min=0.0001, max=100.0, step=0.0001,
                               tooltip="The norm used when magnitude is 'custom'."),
                io.Int.Input("batch_size", default=0, min=0, max=64,
                             tooltip="Images per step; 0 uses the family default (SDXL 4, Gemma models 2)."),
                io.Int.Input("grad_accum", default=0, min=0, max=64,
                             tooltip="Micro-batches accumulated per step; 0 uses the family default (Gemma models 2, else 1)."),
                io.Int.Input("resolution", default=0, min=0, max=4096, step=8,
                             tooltip="Training resolution (square crops); 0 uses the family default (SDXL 768, SD1 512, Gemma 1024)."),
                io.Combo.Input("resize", options=list(RESIZE_MODES), default=RESIZE_MODES[0],
                               tooltip="'resize and crop' scales each image's short side to the resolution (mixed sizes are fine); "
                                       "'keep size' trains at the images' own size, which must be the same for all."),
                io.Boolean.Input("random_crop", default=False, tooltip="Random instead of centered crops."),
                io.Boolean.Input("flip", default=False, tooltip="Randomly mirror images (both versions are encoded once)."),
                # Not called "seed": the front end gives "seed" inputs a randomize-after-queue control by
                # default, which would retrain on every Queue.
                io.Int.Input("training_seed", default=42, min=0, max=0xFFFFFFFF,
                             tooltip="Seed for noise, timesteps, crops and templates; fixed, so queuing again reuses the result."),
                io.Combo.Input("templates", options=sorted(TEMPLATES), default="object",
                               tooltip="Training prompts: the 27 ImageNet object templates or the style templates."),
                io.String.Input("captions", multiline=True, default="",
                                tooltip="Optional: one caption per line (one per image, or a single line for all) with {} where "
                                        "the concept goes; replaces the templates."),
                io.Int.Input("vectors", default=0, min=0, max=16,
                             tooltip="Vectors per encoder; 0 = one per initializer sub-token. More repeats the initializer rows."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="UNet compute dtype while training. auto: bf16 (or fp32) when the model runs in fp16, "
                                       "whose gradients underflow. Vectors and optimizer state are always fp32."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute UNet activations in backward: less memory, slower steps."),
                io.Int.Input("checkpoint_every", default=0, min=0, max=100000,
                             tooltip="Write a resumable checkpoint (vectors + optimizer state) every N steps; 0 = never."),
                io.Combo.Input("resume", options=_resume_choices(), default=NO_RESUME,
                               tooltip="Continue a run from one of its checkpoints (output/dti_checkpoints)."),
                io.Boolean.Input("save", default=True, tooltip="Save the concept to the embeddings folder when training ends."),
                io.Combo.Input("if_exists", options=list(ON_EXISTS), default="increment",
                               tooltip="When the file exists: increment (name_2, …; avoids stale CLIPTextEncode caches), "
                                       "overwrite, or stop with an error."),
            ],
            outputs=[
                DTIConcept.Output(display_name="concept", tooltip="The learned concept, for the other DTI nodes."),
                io.Conditioning.Output(display_name="conditioning", tooltip="The prompt encoded with the learned concept."),
                io.Image.Output(display_name="plot", tooltip="Loss and per-encoder norm over the steps."),
                io.String.Output(display_name="summary", tooltip="What was trained, the numbers, and where it was saved."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, name=None, initializer=None, **_kwargs) -> bool | str:
        for value in (name if isinstance(name, list) else [name]):
            if value is not None:
                try:
                    formats.safe_name(value)
                except formats.EmbeddingFileError as e:
                    return str(e)
        for value in (initializer if isinstance(initializer, list) else [initializer]):
            if value is not None and not str(value).strip():
                return "initializer is empty: give a word close to the concept, e.g. 'dog'"
        return True

    @classmethod
    def execute(cls, model, clip, vae, images, **kw) -> io.NodeOutput:
        model, clip, vae = _one(model), _one(clip), _one(vae)
        kw = {k: _one(v) for k, v in kw.items()}
        encoder = text_encoder(clip)
        d = encoder.family.defaults
        method = kw["method"]
        lr = kw["learning_rate"] or (d.lr if method == "dti" else TI_ADAMW_LR)
        request = TrainRequest(
            name=kw["name"].strip(), initializer=kw["initializer"], method=method,
            steps=kw["steps"] or d.steps, lr=lr,
            kappa=d.kappa if kw["kappa"] < 0 else kw["kappa"],
            magnitude=kw["magnitude_value"] if kw["magnitude"] == "custom" else kw["magnitude"],
            batch_size=kw["batch_size"] or d.batch_size, grad_accum=kw["grad_accum"] or d.grad_accum,
            resolution=kw["resolution"] or d.resolution, resize=kw["resize"], random_crop=kw["random_crop"],
            flip=kw["flip"], seed=kw["training_seed"], templates=kw["templates"], captions=kw["captions"],
            n_vectors=kw["vectors"] or None, precision=kw["precision"],
            gradient_checkpointing=kw["gradient_checkpointing"], checkpoint_every=kw["checkpoint_every"],
            resume=None if kw["resume"] in (None, NO_RESUME) else str(host.checkpoints_folder() / kw["resume"]),
            save=kw["save"], on_exists=kw["if_exists"],
        )
        session = train_concept(model, clip, vae, images, request, node_id=cls.hidden.unique_id)
        vectors = session.concept.vectors()
        conditioning = encoder.conditioning(request.name, kw["prompt"], vectors)
        plot = to_image_tensor(session.plot)
        # The node shows the live chart (web extension) and the summary; the plot stays an output.
        return io.NodeOutput(session.concept, conditioning, plot, session.summary, ui=ui.PreviewText(session.summary))
