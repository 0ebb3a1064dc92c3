"""The catalogue of bad inputs and faults, each through ComfyUI's real prompt validation and executor.

Every case asserts what the user sees — refused at queue (validation message naming the input)
or the exception type and message ComfyUI reports in its execution_error — and that nothing on
disk changed, or exactly and only the files the message says were kept.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import struct
import threading
from pathlib import Path

import pytest
import safetensors.torch
import torch
from comfy_harness import ProgressRecorder, run_prompt, submodule, train_prompt, validate

SDXL_WIDTHS = {"clip_l": 32, "clip_g": 48}  # the tiny SDXL's encoders


# -- what the user sees ---------------------------------------------------------------------------


def refused_at_queue(prompt: dict, *fragments: str) -> str:
    ok, text = validate(prompt)
    assert not ok, "the prompt passed validation"
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text}"
    return text


def run_error(prompt: dict) -> dict:
    """The execution_error ComfyUI reports (the prompt must pass validation and fail when run)."""
    _outputs, executor, messages = run_prompt(prompt, expect_success=False)
    errors = [d for e, d in messages if e == "execution_error"]
    assert errors and not executor.success, f"expected an execution error, got {[e for e, _d in messages]}"
    return errors[0]


def assert_error(error: dict, cls: str, *fragments: str) -> None:
    assert error["exception_type"].rsplit(".", 1)[-1] == cls, error["exception_type"]
    for fragment in fragments:
        assert fragment in error["exception_message"], f"{fragment!r} not in {error['exception_message']}"


# -- files ------------------------------------------------------------------------------------------


def rows(n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, w, generator=g) for k, w in SDXL_WIDTHS.items()}


def write_raw(path: Path, header: dict, data: bytes = b"") -> None:
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/dti_pwned",))


def _truncated(p):
    safetensors.torch.save_file(rows(), str(p))
    p.write_bytes(p.read_bytes()[:-40])


def _tampered_dti(p, pack):
    formats = submodule(pack, "dti.formats")
    concept_mod = submodule(pack, "dti.concept")
    encoders = {k: concept_mod.EncoderConcept.from_vectors(v).rescaled(1.0) for k, v in rows().items()}
    formats.save_concept(concept_mod.Concept("t", encoders, method="dti"), p.parent, p.stem)
    tensors = safetensors.torch.load_file(str(p))
    with safetensors.safe_open(str(p), "pt") as f:
        meta = f.metadata()
    safetensors.torch.save_file({k: v * 1.5 for k, v in tensors.items()}, str(p), metadata=meta)


FILE_CASES = {  # file name → (writer, error class, message fragment)
    "zero_byte.safetensors": (lambda p: p.write_bytes(b""), "EmbeddingFileError", "too short"),
    "truncated.safetensors": (_truncated, "EmbeddingFileError", "truncated"),
    "lying_header.safetensors": (lambda p: write_raw(p, {"clip_l": {"dtype": "F32", "shape": [4, 1_000_000],
                                                                    "data_offsets": [0, 16_000_000]}}, b"\0" * 64),
                                 "EmbeddingFileError", "claims shape [4, 1000000]"),
    "not_json.safetensors": (lambda p: p.write_bytes(struct.pack("<Q", 5) + b"{{{{{"), "EmbeddingFileError", "not valid JSON"),
    "no_tensors.safetensors": (lambda p: write_raw(p, {"__metadata__": {"a": "b"}}), "EmbeddingFileError", "holds no tensors"),
    "int_dtype.safetensors": (lambda p: write_raw(p, {"emb_params": {"dtype": "C64", "shape": [1, 32],
                                                                     "data_offsets": [0, 256]}}, b"\0" * 256),
                              "EmbeddingFileError", "dtype 'C64'"),
    "wrong_width.safetensors": (lambda p: safetensors.torch.save_file({"emb_params": torch.randn(2, 64)}, str(p)),
                                "ConceptMismatchError", "64 wide"),
    "lora_like.safetensors": (lambda p: safetensors.torch.save_file({"emb_params": torch.randn(1000, 32)}, str(p)),
                              "EmbeddingFileError", "expected (n_vectors, width)"),
    "nan.safetensors": (lambda p: safetensors.torch.save_file({**rows(), "clip_l": torch.full((1, 32), math.nan)}, str(p)),
                        "EmbeddingFileError", "NaN"),
    "zero_row.safetensors": (lambda p: safetensors.torch.save_file({**rows(2), "clip_g": torch.zeros(2, 48)}, str(p)),
                             "EmbeddingFileError", "all-zero row(s) [0, 1]"),
    "sd1_only.safetensors": (lambda p: safetensors.torch.save_file({"clip_l": torch.randn(1, 32)}, str(p)),
                             "ConceptMismatchError", "missing clip_g"),
    "runs_code.pt": (lambda p: p.write_bytes(pickle.dumps({"string_to_param": RunsCode()})), "EmbeddingFileError",
                     "refused to load"),
    "zero_byte.pt": (lambda p: p.write_bytes(b""), "EmbeddingFileError", "not a readable embedding"),
    "a_list.pt": (lambda p: torch.save([torch.randn(1, 32)], str(p)), "EmbeddingFileError", "expected a dict"),
    "tampered_dti.safetensors": ("tampered", "EmbeddingFileError", "modified after saving"),
}


def make_file(pack, folder: Path, name: str) -> Path:
    path = folder / name
    writer = FILE_CASES[name][0]
    _tampered_dti(path, pack) if writer == "tampered" else writer(path)
    return path


def ckpt_node():
    return {"class_type": "DTITestTinyCheckpoint", "inputs": {"ckpt_name": "tiny", "family": "sdxl"}}


def load_prompt(embedding: str, node: str = "DTILoadEmbedding") -> dict:
    if node == "DTILoadEmbedding":
        inputs = {"clip": ["1", 1], "embedding": embedding, "prompt": "a photo of {}", "norm": "as saved"}
    else:
        inputs = {"clip": ["1", 1], "embedding": embedding, "k": 4}
    return {"1": ckpt_node(), "5": {"class_type": node, "inputs": inputs}}


@pytest.mark.parametrize("name", sorted(FILE_CASES))
def test_bad_file_is_refused_naming_the_file(pack, sdxl, disk, embeddings, name):
    make_file(pack, embeddings, name)
    disk.reset()
    _writer, cls, fragment = FILE_CASES[name]
    assert_error(run_error(load_prompt(name)), cls, fragment, name)
    assert disk.unchanged()
    assert not Path("/tmp/dti_pwned").exists()


@pytest.mark.parametrize("name", ["lying_header.safetensors", "wrong_width.safetensors", "zero_row.safetensors"])
def test_inspector_refuses_the_same_files(pack, sdxl, disk, embeddings, name):
    make_file(pack, embeddings, name)
    disk.reset()
    _writer, cls, fragment = FILE_CASES[name]
    assert_error(run_error(load_prompt(name, "DTINormInspector")), cls, fragment)
    assert disk.unchanged()


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("n_floats, fragment", [(15_000_000, "15000000 wide"), (20_000_000, "MiB, far more than an embedding")])
def test_huge_file_is_refused_from_its_header_without_reading_it(pack, sdxl, disk, embeddings, n_floats, fragment):
    """A header claiming one enormous row (a real, sparse file of 60 or 80 MB): refused before any tensor is read."""
    path = embeddings / "huge.safetensors"
    write_raw(path, {"emb_params": {"dtype": "F32", "shape": [1, n_floats], "data_offsets": [0, 4 * n_floats]}})
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size + 4 * n_floats)
    disk.reset()
    before = _rss()
    error = run_error(load_prompt("huge.safetensors"))
    grown = (_rss() - before) / 2**20
    print(f"RSS growth while refusing a {4 * n_floats / 2**20:.0f} MiB file: {grown:.1f} MiB")
    assert_error(error, "ConceptMismatchError" if "wide" in fragment else "EmbeddingFileError", fragment)
    assert grown < 16
    assert disk.unchanged()


# -- names and paths (queue time) -------------------------------------------------------------------

BAD_NAMES = {
    "../escape": "leave the embeddings folder", "a/b": "contains a path", "c\\d": "contains a path", "": "empty",
    "   ": "empty", ".hidden": "hide the file", "trailing.": "ends with '.'", "with space": "contains a space",
    "bad:colon": "not allowed in file names", "x" * 239: "239 bytes", "é" * 120: "240 bytes",
}


@pytest.mark.parametrize("name", list(BAD_NAMES), ids=[f"name{i}" for i in range(len(BAD_NAMES))])
@pytest.mark.parametrize("node", ["DTITrainConcept", "DTISaveConcept"])
def test_unsafe_or_too_long_name_is_refused_at_queue(pack, disk, node, name):
    if node == "DTITrainConcept":
        prompt = train_prompt(name=name)
    else:
        prompt = {**load_prompt("x"), "6": {"class_type": "DTISaveConcept",
                                            "inputs": {"concept": ["5", 1], "name": name, "if_exists": "increment"}}}
    refused_at_queue(prompt, BAD_NAMES[name], "name")
    assert disk.unchanged()


def test_longest_allowed_name_is_written(pack, sdxl, embeddings, output):
    formats = submodule(pack, "dti.formats")
    name = "n" * formats.MAX_NAME_BYTES
    assert validate(train_prompt(name=name))[0]
    run_prompt(train_prompt(name=name, steps=1))
    run_prompt(train_prompt(name=name, steps=1, training_seed=7))  # the increment suffix fits too
    assert files_under(embeddings) == [f"{name}.safetensors", f"{name}_2.safetensors"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert (embeddings / f"{name}.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # as any new file, not 0600


def test_if_exists_error_is_refused_at_queue_by_save_node(pack, sdxl, disk, embeddings):
    make_file(pack, embeddings, "sd1_only.safetensors")
    safetensors.torch.save_file(rows(), str(embeddings / "good.safetensors"))
    disk.reset()
    prompt = {**load_prompt("good.safetensors"), "6": {"class_type": "DTISaveConcept",
                                                       "inputs": {"concept": ["5", 1], "name": "good", "if_exists": "error"}}}
    refused_at_queue(prompt, "good.safetensors already exists")
    assert disk.unchanged()


# -- training that must not start -------------------------------------------------------------------


def no_training(case):
    """Runs a DTI Train case; asserts no step ran and nothing on disk changed; returns the error."""
    prompt, disk = case
    with ProgressRecorder() as progress:
        error = run_error(prompt)
    assert [e for e in progress.events if e["node"] == "3"] == [], "a training step ran"
    assert disk.unchanged(), disk.changes()
    return error


def test_if_exists_error_fails_before_training(pack, sdxl, disk, embeddings):
    (embeddings / "taken.safetensors").write_bytes(b"old")
    disk.reset()
    assert_error(no_training((train_prompt(name="taken", if_exists="error"), disk)), "EmbeddingFileError",
                 "taken.safetensors already exists", "overwrite/increment")
    assert (embeddings / "taken.safetensors").read_bytes() == b"old"


def test_legacy_node_refuses_if_exists_error_at_queue(pack, sdxl, disk, embeddings):
    (embeddings / "taken.safetensors").write_bytes(b"old")
    disk.reset()
    legacy = train_prompt(name="taken")
    main, options = legacy.pop("3")["inputs"], legacy.pop("opts")["inputs"]
    main.pop("options")
    legacy["3"] = {"class_type": "DTITrain", "inputs": {**main, **options, "steps": 0, "learning_rate": 0.0,
                                                        "batch_size": 0, "grad_accum": 0, "resolution": 64, "vectors": 0,
                                                        "if_exists": "error"}}
    refused_at_queue(legacy, "taken.safetensors already exists")
    assert disk.unchanged()


TEXT_AT_QUEUE = {
    "prompt without the concept": (dict(prompt="a photo of a dog"), "does not mention the concept"),
    "prompt naming another concept": (dict(prompt="a photo of embedding:other"), "does not mention the concept"),
    "empty initializer": (dict(initializer="  "), "initializer is empty"),
    "17-word initializer": (dict(initializer=" ".join(["dog"] * 17)), "17 words"),
    "100-word initializer": (dict(initializer=" ".join(["cat"] * 100)), "100 words"),
}


@pytest.mark.parametrize("case", list(TEXT_AT_QUEUE))
def test_text_that_cannot_work_is_refused_at_queue(pack, disk, case):
    overrides, fragment = TEXT_AT_QUEUE[case]
    refused_at_queue(train_prompt(**overrides), fragment)
    assert disk.unchanged()


TEXT_BEFORE_TRAINING = {
    "one word of 20+ sub-tokens": (dict(initializer="x" * 200), "InputError", "at most 16"),
    "fewer vectors than sub-tokens": (dict(initializer="big dog", vectors=1), "InputError", "2 sub-tokens but only 1"),
    "prompt with a longer name": (dict(name="cat", prompt="a photo of embedding:catalogue"), "MissingPlaceholderError",
                                  "does not mention the concept"),
    "too many checkpoints": (dict(steps=1000, checkpoint_every=1), "InputError", "at most 100"),
}


@pytest.mark.parametrize("case", list(TEXT_BEFORE_TRAINING))
def test_text_known_only_to_the_tokenizer_fails_before_training(pack, sdxl, disk, case):
    overrides, cls, fragment = TEXT_BEFORE_TRAINING[case]
    assert_error(no_training((train_prompt(**overrides), disk)), cls, fragment)


# -- images -----------------------------------------------------------------------------------------

IMAGE_CASES = {
    "nan": ({}, "InputError", "NaN or infinite pixel values"),
    "inf": ({}, "InputError", "training image(s) [0] of 2"),
    "empty": ({}, "TrainingError", "image batch is empty"),
    "mixed": ({"resize": "keep size"}, "TrainingError", "different sizes"),
}


@pytest.mark.parametrize("kind", list(IMAGE_CASES))
def test_bad_image_batch_fails_before_training(pack, sdxl, bad_images_node, disk, kind):
    overrides, cls, fragment = IMAGE_CASES[kind]
    prompt = train_prompt(**overrides)
    prompt["2"] = {"class_type": bad_images_node, "inputs": {"kind": kind}}
    assert_error(no_training((prompt, disk)), cls, fragment)


def test_caption_lines_must_match_the_images(pack, sdxl, disk):
    assert_error(no_training((train_prompt(captions="{} one\n{} two"), disk)), "TrainingError", "2 caption lines for 3 images")


# -- numbers: every value outside its schema, for every node (queue time) ----------------------------

LINKS = {"MODEL": ["1", 0], "CLIP": ["1", 1], "VAE": ["2", 0], "IMAGE": ["2", 0], "DTI_CONCEPT": ["5", 1],
         "DTI_TRAIN_OPTIONS": ["opts", 0]}


def default_inputs(cls) -> dict:
    """A node's inputs at their defaults, sockets linked to the graph below (optional sockets left open)."""
    from nodes_api import io

    out = {}
    for spec in cls.define_schema().inputs:
        if isinstance(spec, io.Combo.Input):
            out[spec.id] = spec.default if spec.default is not None else spec.options[0]
        elif isinstance(spec, io.WidgetInput):
            out[spec.id] = spec.default
        elif not spec.optional:
            kind = "CLIP" if spec.id == "clip" else spec.get_io_type()
            out[spec.id] = ["1", 2] if kind == "VAE" else LINKS[kind]
    return out


def bad_values(spec) -> list:
    from nodes_api import io

    if isinstance(spec, io.Combo.Input):
        return ["not-a-choice"]
    if isinstance(spec, (io.Int.Input, io.Float.Input)):
        out = []
        if spec.min is not None:
            out.append(spec.min - 1)
        if spec.max is not None:
            out.append(spec.max + 1)
        if isinstance(spec, io.Float.Input):
            out.append(math.nan)
        return out
    return []


SWEPT = ["DTITrainConcept", "DTITrainOptions", "DTITrain", "DTISlerpConcepts", "DTINormInspector", "DTILoadEmbedding",
         "DTISaveConcept"]  # every node but DTI SANA Instruction, whose GEMMA input needs ComfyUI_ExtraModels


@pytest.fixture
def nodes_api(pack, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nodes_api", submodule(pack, "nodes.api"))


@pytest.mark.parametrize("node_id", SWEPT)
def test_every_value_outside_its_schema_is_refused_at_queue_naming_the_input(pack, nodes_api, disk, embeddings, node_id):
    import nodes

    safetensors.torch.save_file(rows(), str(embeddings / "good.safetensors"))
    disk.reset()
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    graph = train_prompt()
    graph["5"] = load_prompt("good.safetensors")["5"]
    graph["t"] = {"class_type": node_id, "inputs": default_inputs(cls)}
    if node_id == "DTILoadEmbedding":
        graph["t"]["inputs"]["embedding"] = "good.safetensors"
    assert validate(graph)[0], validate(graph)[1]
    cases = 0
    for spec in cls.define_schema().inputs:
        for bad in bad_values(spec):
            broken = {**graph, "t": {"class_type": node_id, "inputs": {**graph["t"]["inputs"], spec.id: bad}}}
            ok, text = validate(broken)
            assert not ok, f"{node_id}.{spec.id} = {bad!r} passed validation"
            assert spec.id in text, f"{node_id}.{spec.id} = {bad!r}: the message does not name the input: {text}"
            cases += 1
    print(f"{node_id}: {cases} out-of-schema values refused")
    assert cases > 0 and disk.unchanged()


def test_float_and_combo_inputs_are_all_checked_by_the_pack(pack, nodes_api):
    """NaN passes ComfyUI's min/max checks and V3 combos are not checked at all: every FLOAT and COMBO input is
    named in its node's validate_inputs (which checks it against the schema)."""
    import inspect

    import nodes

    validation = submodule(pack, "nodes.validation")
    for node_id in SWEPT:
        cls = nodes.NODE_CLASS_MAPPINGS[node_id]
        named = set(inspect.signature(cls.validate_inputs).parameters) if "validate_inputs" in vars(cls) else set()
        assert set(validation.must_be_named(cls)) <= named, node_id
        assert not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls.validate_inputs).parameters.values())


# -- blending ---------------------------------------------------------------------------------------

BLEND_AT_QUEUE = {
    "t_values range of 100000": (dict(t_values="0:1:100000"), "count is 100000"),
    "65 t values": (dict(t_values=",".join(["0.5"] * 65)), "65 t values; at most 64"),
    "t value above 1": (dict(t_values="0, 1.5"), "must lie in [0, 1]"),
    "t values not numbers": (dict(t_values="a, b"), "must be numbers"),
    "malformed range": (dict(t_values="0:1"), "start:stop:count"),
    "five weights": (dict(weights="1,1,1,1,1"), "at most 4"),
    "negative weight": (dict(weights="-1, 1, 1"), "≥ 0"),
    "NaN weight": (dict(weights="nan, 1"), "finite"),
}


def slerp_prompt(a="a.safetensors", b="b.safetensors", c=None, **inputs) -> dict:
    prompt = {"1": ckpt_node()}
    for key, name in (("A", a), ("B", b), ("C", c)):
        if name:
            prompt[key] = load_prompt(name)["5"]
    base = {"clip": ["1", 1], "concept_a": ["A", 1], "concept_b": ["B", 1], "prompt": "a photo of {}", "mode": "slerp",
            "t": 0.5, "t_values": "", "weights": ""}
    if c:
        base["concept_c"] = ["C", 1]
    prompt["S"] = {"class_type": "DTISlerpConcepts", "inputs": {**base, **inputs}}
    return prompt


@pytest.fixture
def blend_files(embeddings):
    r = rows()
    safetensors.torch.save_file(r, str(embeddings / "a.safetensors"))
    safetensors.torch.save_file(rows(seed=1), str(embeddings / "b.safetensors"))
    safetensors.torch.save_file({k: -v for k, v in r.items()}, str(embeddings / "opposite.safetensors"))
    safetensors.torch.save_file(rows(2, seed=2), str(embeddings / "two_rows.safetensors"))
    safetensors.torch.save_file({"clip_l": torch.randn(1, 32)}, str(embeddings / "sd1.safetensors"))


@pytest.mark.parametrize("case", list(BLEND_AT_QUEUE))
def test_blend_text_is_refused_at_queue(pack, blend_files, disk, case):
    disk.reset()
    overrides, fragment = BLEND_AT_QUEUE[case]
    refused_at_queue(slerp_prompt(**overrides), fragment)
    assert disk.unchanged()


BLEND_AT_RUN = {
    "a third concept with more rows": (dict(c="two_rows.safetensors"), "BlendError", "'two_rows' has 2"),
    "weights count mismatch": (dict(b="b.safetensors", c="a.safetensors", weights="1, 2"), "BlendError", "3 concepts but 2 weights"),
    "different vector counts": (dict(b="two_rows.safetensors"), "BlendError", "has 1 vector(s)"),
    "lerp through the origin": (dict(b="opposite.safetensors", mode="lerp"), "BlendError", "reaches the origin"),
    "slerp of opposite rows": (dict(b="opposite.safetensors"), "BlendError", "clip_"),
    "a concept of another family": (dict(b="sd1.safetensors"), "ConceptMismatchError", "missing clip_g"),
}


@pytest.mark.parametrize("case", list(BLEND_AT_RUN))
def test_blend_that_cannot_work_says_why(pack, sdxl, blend_files, disk, case):
    disk.reset()
    overrides, cls, fragment = BLEND_AT_RUN[case]
    assert_error(run_error(slerp_prompt(**overrides)), cls, fragment)
    assert disk.unchanged()


# -- faults -----------------------------------------------------------------------------------------


@pytest.fixture
def failing_writes(pack, monkeypatch):
    """fail(folder, errno): every safetensors write into ``folder`` writes a few bytes, then fails like the OS would."""
    real = safetensors.torch.save_file
    failing: dict[Path, int] = {}

    def save_file(tensors, filename, metadata=None):
        path = Path(filename)
        for folder, code in failing.items():
            if folder == path.parent or folder in path.parents:
                path.write_bytes(b"partial")
                raise OSError(code, os.strerror(code), str(path))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    return lambda folder, code: failing.__setitem__(Path(folder), code)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("code, remedy", [(errno.ENOSPC, "free disk space"), (errno.EACCES, "make the folder writable"),
                                          (errno.ENAMETOOLONG, "use a shorter name")])
def test_failed_save_after_training_keeps_the_vectors(pack, sdxl, disk, embeddings, output, failing_writes, code, remedy):
    (embeddings / "kept.safetensors").write_bytes(b"old")
    disk.reset()
    failing_writes(embeddings, code)
    error = run_error(train_prompt(name="kept", steps=2, if_exists="overwrite"))
    assert_error(error, "SaveError", str(embeddings), remedy, "dti_unsaved", "kept.safetensors", "checkpoint")
    changes = disk.changes()
    assert changes["removed"] == changes["changed"] == []  # the old file was not overwritten, no partial file left
    assert [str(Path(p).relative_to(output)) for p in changes["added"]] == [
        "dti_checkpoints/kept/unsaved_000002.safetensors", "dti_unsaved/kept.safetensors"]
    assert (embeddings / "kept.safetensors").read_bytes() == b"old"
    formats = submodule(pack, "dti.formats")
    assert formats.load_embedding(output / "dti_unsaved" / "kept.safetensors").layout == "comfyui-dti"


def test_failed_checkpoint_during_training_stops_and_keeps_the_concept(pack, sdxl, disk, embeddings, output, failing_writes):
    failing_writes(output / "dti_checkpoints", errno.ENOSPC)
    error = run_error(train_prompt(name="ck", steps=4, checkpoint_every=2))
    assert_error(error, "CheckpointError", "free disk space", "Saved what was learned so far", "ck.safetensors")
    assert files_under(embeddings) == ["ck.safetensors"] and files_under(output) == []


def test_when_nothing_can_be_written_the_message_says_so(pack, sdxl, disk, embeddings, output, failing_writes):
    for folder in (embeddings, output):
        failing_writes(folder, errno.ENOSPC)
    error = run_error(train_prompt(name="lost", steps=2))
    assert_error(error, "SaveError", "were kept: nothing", "free disk space")
    assert disk.unchanged(), disk.changes()


@pytest.fixture
def read_only(monkeypatch):
    """Make folders read-only; as root (where chmod does not stop writes) os.access answers as it would for a user."""
    folders = []
    real_access = os.access

    def access(path, mode, **kw):
        if mode & os.W_OK and Path(path) in folders:
            return False
        return real_access(path, mode, **kw)

    def make(folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        folders.append(folder)

    monkeypatch.setattr(os, "access", access)
    yield make
    for folder in folders:
        folder.chmod(0o755)


def test_read_only_embeddings_folder_fails_before_training(pack, sdxl, disk, embeddings, read_only):
    read_only(embeddings)
    assert_error(no_training((train_prompt(name="ro"), disk)), "SaveError", str(embeddings), "make the folder writable")


def test_read_only_checkpoints_folder_fails_before_training(pack, sdxl, disk, output, read_only):
    read_only(output / "dti_checkpoints")
    disk.reset()
    assert_error(no_training((train_prompt(name="ro", checkpoint_every=2), disk)), "SaveError", "dti_checkpoints",
                 "make the folder writable")


def test_save_node_on_a_full_disk_overwrites_nothing(pack, sdxl, disk, embeddings, failing_writes):
    safetensors.torch.save_file(rows(), str(embeddings / "good.safetensors"))
    disk.reset()
    failing_writes(embeddings, errno.ENOSPC)
    prompt = {**load_prompt("good.safetensors"), "6": {"class_type": "DTISaveConcept",
                                                       "inputs": {"concept": ["5", 1], "name": "good", "if_exists": "overwrite"}}}
    assert_error(run_error(prompt), "SaveError", str(embeddings), "free disk space")
    assert disk.unchanged(), disk.changes()


def test_interrupt_from_another_thread_keeps_the_last_good_vectors(pack, sdxl, disk, embeddings, output):
    import comfy.model_management

    class InterruptAtStep2(ProgressRecorder):
        def __call__(self, value, total, preview_image, prompt_id=None, node_id=None):
            super().__call__(value, total, preview_image, prompt_id, node_id)
            if node_id == "3" and value == 2:  # the user presses Cancel while step 3 would run
                t = threading.Thread(target=comfy.model_management.interrupt_current_processing, args=(True,))
                t.start()
                t.join()

    with InterruptAtStep2():
        _outputs, executor, messages = run_prompt(train_prompt(name="stopped", steps=6), expect_success=False)
    assert [e for e, _d in messages if e == "execution_interrupted"] and not executor.success
    assert files_under(embeddings) == ["stopped.safetensors"]
    assert files_under(output) == ["dti_checkpoints/stopped/interrupted_000002.safetensors"]


def test_nan_loss_stops_and_keeps_the_last_good_vectors(pack, sdxl, disk, embeddings, output, monkeypatch):
    denoise = submodule(pack, "adapters.denoise").ModelDenoiseSide
    real_loss, calls = denoise.loss, []

    def loss_turning_nan(self, batch, cond, generator):
        calls.append(1)
        loss = real_loss(self, batch, cond, generator)
        return loss * math.nan if len(calls) > 2 else loss

    monkeypatch.setattr(denoise, "loss", loss_turning_nan)
    error = run_error(train_prompt(name="diverged", steps=20))
    assert_error(error, "TrainingDiverged", "NaN/inf", "Saved what was learned so far")
    assert files_under(embeddings) == ["diverged.safetensors"]
    saved = safetensors.torch.load_file(str(embeddings / "diverged.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())
