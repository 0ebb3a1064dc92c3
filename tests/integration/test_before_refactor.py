"""Same inputs, same bits: files and conditioning match those the pack produced before its settings refactor.

tests/fixtures/before_refactor/ holds, per case, the concept file and the conditioning that the
first DTI Train (29 inputs on one node) produced in the executor. Both the current DTI Train (with
DTI Train Options) and the kept legacy node must reproduce them bit for bit: every tensor's bytes
and every metadata entry. (Not the file's bytes as a whole: the safetensors library writes metadata
keys in hash-map order, which changes from one process to the next.)
"""

from pathlib import Path

import pytest
import safetensors.torch
import torch
from comfy_harness import run_prompt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "before_refactor"
CASES = (("sdxl", "dti"), ("sd1", "dti"), ("sdxl", "ti"))
LEGACY = {
    "steps": 4, "learning_rate": 0.0, "kappa": -1.0, "magnitude": "mean", "magnitude_value": 0.4,
    "batch_size": 2, "grad_accum": 0, "resolution": 64, "resize": "resize and crop", "random_crop": True,
    "flip": True, "training_seed": 5, "templates": "object", "captions": "", "vectors": 0, "precision": "auto",
    "gradient_checkpointing": False, "checkpoint_every": 0, "resume": "none", "save": True, "if_exists": "overwrite",
}


def graph(family, method, name, legacy):
    common = {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "name": name,
              "initializer": "dog", "prompt": "a photo of {} on a beach", "method": method}
    prompt = {
        "1": {"class_type": "DTITestTinyCheckpoint", "inputs": {"ckpt_name": "tiny", "family": family}},
        "2": {"class_type": "DTITestImages", "inputs": {"count": 3, "size": 64, "seed": 3}},
    }
    if legacy:
        prompt["3"] = {"class_type": "DTITrain", "inputs": {**common, **LEGACY}}
    else:
        # The new node: -1 is the family default; only what the legacy graph changed is set.
        prompt["4"] = {"class_type": "DTITrainOptions", "inputs": {
            "kappa": -1.0, "beta": 0.0, "magnitude": "mean", "magnitude_value": 0.4, "batch_size": 2, "grad_accum": -1,
            "resize": "resize and crop", "random_crop": True, "flip": True, "training_seed": 5, "templates": "object",
            "captions": "", "vectors": -1, "precision": "auto", "gradient_checkpointing": False, "checkpoint_every": 0,
            "resume": "none", "save": True, "if_exists": "overwrite"}}
        prompt["3"] = {"class_type": "DTITrainConcept", "inputs": {
            **common, "steps": 4, "learning_rate": -1.0, "resolution": 64, "options": ["4", 0]}}
    return prompt


def read(path: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    """Every tensor's raw bytes (with dtype and shape) and the metadata, as written."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        tensors = {k: (str(t.dtype), tuple(t.shape), t.numpy().tobytes()) for k in f.keys() for t in [f.get_tensor(k)]}
        return tensors, dict(f.metadata())


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
@pytest.mark.parametrize("family, method", CASES)
def test_files_and_conditioning_are_bit_identical(pack, embeddings, family, method, legacy):
    name = f"ref_{family}_{method}"
    outputs, _, _ = run_prompt(graph(family, method, name, legacy))
    assert read(embeddings / f"{name}.safetensors") == read(FIXTURES / f"{name}.safetensors")
    cond = outputs["3"][1][0]
    before = safetensors.torch.load_file(str(FIXTURES / f"{name}.cond.safetensors"))
    assert torch.equal(cond[0][0], before["cond"])
    if "pooled" in before:
        assert torch.equal(cond[0][1]["pooled_output"], before["pooled"])
