"""DTI Train inside ComfyUI: loaded by its loader, executed by its executor, used by stock nodes."""

from comfy_harness import ProgressRecorder, run_prompt, train_prompt

MAIN_NODE = "DTITrainConcept"  # the node train_prompt builds
MAIN_INPUTS = ("model", "clip", "vae", "images", "name", "initializer", "prompt", "method", "steps", "learning_rate",
               "resolution")


def test_pack_registers_its_nodes_through_comfyuis_loader(pack):
    import nodes

    assert MAIN_NODE in nodes.NODE_CLASS_MAPPINGS
    info = nodes.NODE_CLASS_MAPPINGS[MAIN_NODE].GET_NODE_INFO_V1()
    assert info["display_name"] == "DTI Train" and info["category"] == "DTI"
    assert info["output"] == ["DTI_CONCEPT", "CONDITIONING", "IMAGE", "STRING", "IMAGE"]  # previews last
    for node_id in (MAIN_NODE, "DTITrainOptions", "DTITrain"):
        spec = nodes.NODE_CLASS_MAPPINGS[node_id].GET_NODE_INFO_V1()
        for section in ("required", "optional"):
            for name, entry in spec["input"].get(section, {}).items():
                assert entry[1].get("tooltip"), f"{node_id} input {name} has no tooltip"
        assert all(spec["output_tooltips"])
    assert all(info["output_tooltips"])


def test_train_node_is_readable_at_a_glance(pack):
    """At most 12 inputs on DTI Train; the rest on DTI Train Options (optional socket); the old node kept, deprecated."""
    import nodes

    info = nodes.NODE_CLASS_MAPPINGS[MAIN_NODE].GET_NODE_INFO_V1()
    assert tuple(info["input"]["required"]) == MAIN_INPUTS
    assert tuple(info["input"]["optional"]) == ("options",)
    assert len(info["input"]["required"]) + len(info["input"]["optional"]) <= 12
    legacy = nodes.NODE_CLASS_MAPPINGS["DTITrain"].GET_NODE_INFO_V1()
    assert legacy["deprecated"] and len(legacy["input"]["required"]) == 29
    options = nodes.NODE_CLASS_MAPPINGS["DTITrainOptions"].GET_NODE_INFO_V1()
    # every setting of the legacy node lives on exactly one of the two new nodes
    assert set(legacy["input"]["required"]) | {"beta"} == set(MAIN_INPUTS) | set(options["input"]["required"])


def test_train_node_runs_in_the_executor_and_feeds_a_stock_sampler(pack, embeddings):
    prompt = train_prompt()
    prompt["4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["5"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}}
    prompt["6"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["3", 1], "negative": ["5", 0], "latent_image": ["4", 0], "seed": 1,
        "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    prompt["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
    prompt["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}
    with ProgressRecorder() as progress:
        outputs, executor, messages = run_prompt(prompt)
    concept, conditioning, plot, summary = (outputs["3"][i][0] for i in range(4))
    assert concept.method == "dti" and set(concept.encoders) == {"clip_l", "clip_g"}
    assert conditioning[0][0].shape == (1, 77, 80) and conditioning[0][1]["pooled_output"].shape == (1, 48)
    assert plot.ndim == 4 and plot.shape[-1] == 3
    assert "6 steps" in summary and "exec_cat.safetensors" in summary
    assert outputs["7"][0][0].shape == (1, 64, 64, 3)
    assert (embeddings / "exec_cat.safetensors").is_file()
    # the node showed its plot and summary, and the progress bar advanced to the end
    ui = executor.history_result["outputs"]["3"]
    assert "exec_cat" in ui["text"][0]
    mine = [e for e in progress.events if e["node"] == "3"]
    assert [e["value"] for e in mine] == [1, 2, 3, 4, 5, 6] and all(e["max"] == 6 for e in mine)
    previews = [e["preview"] for e in mine if e["preview"] is not None]
    assert previews and previews[0][0] == "JPEG" and previews[0][1].size[0] > 100  # the live loss plot


def test_unsafe_name_is_rejected_before_anything_runs(pack, embeddings):
    import asyncio

    import execution

    valid = asyncio.run(execution.validate_prompt("x", train_prompt(name="../escape"), None))
    assert not valid[0]
    assert "leave the embeddings folder" in str(valid[3])
    assert list(embeddings.iterdir()) == []


def test_node_help_pages_match_the_schemas(pack):
    """web/docs/<NodeId>.md are generated from define_schema(); regenerate with tests/support/node_docs.py."""
    import node_docs

    classes = node_docs.node_classes(pack)
    assert {c.define_schema().node_id for c in classes} == {p.stem for p in node_docs.DOCS.glob("*.md")}
    for cls in classes:
        page = node_docs.DOCS / f"{cls.define_schema().node_id}.md"
        assert page.read_text() == node_docs.render(cls), f"{page.name} is stale: run python tests/support/node_docs.py"
