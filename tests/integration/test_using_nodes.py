"""DTI Load Embedding, Slerp Concepts, Norm Inspector and Save Concept in ComfyUI's executor."""


import pytest
import safetensors.torch
import torch
from comfy_harness import run_prompt, submodule, tiny_objects, validate


def make_concept(pack, name, seed, family="sdxl", n=1):
    """A DTI concept at each tiny encoder's m*, written like DTI Train writes it."""
    concept_mod, formats = submodule(pack, "dti.concept"), submodule(pack, "dti.formats")
    vocab, encoders = submodule(pack, "adapters.vocab"), submodule(pack, "adapters.text_encoder")
    _model, clip, _vae = tiny_objects(family)
    enc = encoders.text_encoder(clip)
    fam = enc.family
    g = torch.Generator().manual_seed(seed)
    encs = {}
    for sub in fam.encoders:
        s, _ = vocab.stats(enc.table(sub.key))
        d = torch.randn(n, enc.table(sub.key).shape[1], generator=g)
        encs[sub.key] = concept_mod.EncoderConcept(directions=d / d.norm(dim=-1, keepdim=True), norms=torch.full((n,), s.mean),
                                                   m_star=s.mean, encoder_id=sub.encoder_id)
    c = concept_mod.Concept(name=name, encoders=encs, family=fam.name)
    return c, formats.save_concept(c, submodule(pack, "adapters.folders").embeddings_folder(), name, on_exists="overwrite")


def loader(family="sdxl"):
    return {"class_type": "DTITestTinyCheckpoint", "inputs": {"ckpt_name": "tiny", "family": family}}


def load_node(embedding, prompt="a photo of {} on a beach", norm="as saved"):
    return {"class_type": "DTILoadEmbedding", "inputs": {"clip": ["1", 1], "embedding": embedding, "prompt": prompt, "norm": norm}}


def sampler_chain(prompt, cond_ref, batch):
    prompt["20"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}}
    prompt["21"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}}
    prompt["22"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": cond_ref, "negative": ["21", 0], "latent_image": ["20", 0], "seed": 1,
        "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    prompt["23"] = {"class_type": "VAEDecode", "inputs": {"samples": ["22", 0], "vae": ["1", 2]}}


# ---------------------------------------------------------------------------------------------
# DTI Load Embedding


def test_load_embedding_matches_stock_prompt_and_feeds_a_sampler(pack, embeddings):
    concept, path = make_concept(pack, "loaded_cat", 1, n=2)
    prompt = {"1": loader(), "2": load_node("loaded_cat.safetensors", "a photo of embedding:loaded_cat, in snow"),
              "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of embedding:loaded_cat, in snow"}}}
    sampler_chain(prompt, ["2", 0], 1)
    outputs, executor, _ = run_prompt(prompt)
    ours, stock = outputs["2"][0][0], outputs["3"][0][0]
    assert torch.equal(ours[0][0], stock[0][0]) and torch.equal(ours[0][1]["pooled_output"], stock[0][1]["pooled_output"])
    loaded = outputs["2"][1][0]
    assert torch.allclose(loaded.encoders["clip_g"].vectors(), concept.encoders["clip_g"].vectors(), atol=1e-7)
    assert outputs["23"][0][0].shape == (1, 64, 64, 3)
    assert "comfyui-dti layout" in executor.history_result["outputs"]["2"]["text"][0]


def test_ordinary_ti_file_loads_and_rescales_to_m_star(pack, embeddings):
    vocab, encoders = submodule(pack, "adapters.vocab"), submodule(pack, "adapters.text_encoder")
    (embeddings / "sub").mkdir()
    ti = torch.randn(2, 32) * 2.0  # an A1111 SD1 embedding with TI's inflated norms
    torch.save({"string_to_param": {"*": ti}, "name": "ti", "step": 1000}, embeddings / "sub" / "old_ti.pt")
    prompt = {"1": loader("sd1"),
              "2": load_node("sub/old_ti.pt", "embedding:sub/old_ti in a garden"),
              "3": load_node("sub/old_ti.pt", "{} in a garden", norm="rescale to m* (TI-rescaled)"),
              "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "embedding:sub/old_ti in a garden"}}}
    outputs, _, _ = run_prompt(prompt)
    assert torch.equal(outputs["2"][0][0][0][0], outputs["4"][0][0][0][0])  # stock reads the same .pt the same way
    raw, rescaled = outputs["2"][1][0], outputs["3"][1][0]
    assert raw.method == "imported" and torch.allclose(raw.encoders["clip_l"].vectors(), ti, atol=1e-6)
    m_star = vocab.stats(encoders.text_encoder(tiny_objects("sd1")[1]).table("clip_l"))[0].mean
    assert torch.allclose(rescaled.encoders["clip_l"].norms, torch.full((2,), m_star), rtol=1e-6)
    assert torch.allclose(rescaled.encoders["clip_l"].directions, raw.encoders["clip_l"].directions, atol=1e-6)
    assert not torch.equal(outputs["3"][0][0][0][0], outputs["2"][0][0][0][0])


def test_load_embedding_refuses_files_for_another_model(pack, embeddings):

    vocab = submodule(pack, "adapters.vocab")
    safetensors.torch.save_file({"emb_params": torch.randn(1, 768)}, str(embeddings / "real_sd15.safetensors"))
    make_concept(pack, "sd1_only", 2, family="sd1")
    before = sorted(p.name for p in embeddings.iterdir())
    for name, match in (("real_sd15.safetensors", r"768 wide — CLIP-L \(SD1.x, or SDXL's first encoder, .*\) — but this CLIP is SDXL"),
                        ("sd1_only.safetensors", r"rows for SD1.x — but this CLIP is SDXL .*missing clip_g")):
        outputs, executor, messages = run_prompt({"1": loader(), "2": load_node(name)}, expect_success=False)
        errors = [d for e, d in messages if e == "execution_error"]
        assert errors and errors[0]["exception_type"].endswith("ConceptMismatchError")
        assert pytest.importorskip("re").search(match, errors[0]["exception_message"]), errors[0]["exception_message"]
    assert sorted(p.name for p in embeddings.iterdir()) == before
    ok, text = validate({"1": loader(), "2": load_node("nope.safetensors")})
    assert not ok and "nope.safetensors" in text
    assert vocab  # module imported under the pack


def test_load_embedding_reexecutes_when_the_file_changes(pack, embeddings):
    import os
    import time

    make_concept(pack, "changing", 3)
    node = submodule(pack, "nodes.load").DTILoadEmbedding
    first = node.fingerprint_inputs(embedding="changing.safetensors")
    time.sleep(0.01)
    path = embeddings / "changing.safetensors"
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    assert node.fingerprint_inputs(embedding="changing.safetensors") != first


# ---------------------------------------------------------------------------------------------
# DTI Slerp Concepts


def slerp_prompt(t_values="0, 0.5, 1", mode="slerp", t=0.5, extra=None):
    make = {"1": loader(), "2": load_node("cat_a.safetensors"), "3": load_node("cat_b.safetensors"),
            "4": {"class_type": "DTISlerpConcepts", "inputs": {
                "clip": ["1", 1], "concept_a": ["2", 1], "concept_b": ["3", 1], "prompt": "a photo of {} on a beach",
                "mode": mode, "t": t, "t_values": t_values, "weights": ""}}}
    if extra:
        make["4"]["inputs"].update(extra)
    return make


def test_slerp_strip_renders_in_one_sampler_run(pack, embeddings):
    a, _ = make_concept(pack, "cat_a", 10)
    b, _ = make_concept(pack, "cat_b", 11)
    prompt = slerp_prompt("0:1:3")
    sampler_chain(prompt, ["4", 0], 3)
    outputs, _, _ = run_prompt(prompt)
    cond = outputs["4"][0][0]
    assert cond[0][0].shape == (3, 77, 80) and cond[0][1]["pooled_output"].shape == (3, 48)
    # t = 0 and t = 1 are exactly the endpoints' conditioning
    assert torch.equal(cond[0][0][0], outputs["2"][0][0][0][0][0])
    assert torch.equal(cond[0][0][2], outputs["3"][0][0][0][0][0])
    mid = outputs["4"][1][0]
    for key in ("clip_l", "clip_g"):
        assert torch.allclose(mid.encoders[key].norms, a.encoders[key].norms, rtol=1e-6)  # fixed norm at t = 0.5
    assert outputs["23"][0][0].shape == (3, 64, 64, 3)


def test_lerp_mode_dips_and_weighted_mean_of_three(pack, embeddings):
    a, _ = make_concept(pack, "cat_a", 10)
    make_concept(pack, "cat_b", 11)
    make_concept(pack, "cat_c", 12)
    outputs, _, _ = run_prompt(slerp_prompt("", mode="lerp"))
    lerp = outputs["4"][1][0]
    assert float(lerp.encoders["clip_l"].norms.max()) < float(a.encoders["clip_l"].norms[0]) * 0.99
    prompt = slerp_prompt("")
    prompt["5"] = load_node("cat_c.safetensors")
    prompt["4"]["inputs"].update(concept_c=["5", 1], weights="1, 1, 2")
    outputs, _, _ = run_prompt(prompt)
    mean = outputs["4"][1][0]
    assert mean.method == "mean" and mean.info["weights"] == pytest.approx([0.25, 0.25, 0.5])


def test_slerp_bad_inputs(pack, embeddings):


    a, _ = make_concept(pack, "cat_a", 10)
    concept_mod, formats = submodule(pack, "dti.concept"), submodule(pack, "dti.formats")
    before = None
    ok, text = validate(slerp_prompt("0, 1.5"))
    assert not ok and "t values must lie in [0, 1]" in text
    # antipodal concept b
    anti = concept_mod.Concept(name="cat_b", family="sdxl", encoders={
        k: concept_mod.EncoderConcept(directions=-e.directions, norms=e.norms, m_star=e.m_star, encoder_id=e.encoder_id)
        for k, e in a.encoders.items()})
    formats.save_concept(anti, embeddings, "cat_b", on_exists="overwrite")
    before = sorted(p.name for p in embeddings.iterdir())
    _, _, messages = run_prompt(slerp_prompt("0.5"), expect_success=False)
    err = [d for e, d in messages if e == "execution_error"][0]
    assert "antipodal" in err["exception_message"] and err["node_type"] == "DTISlerpConcepts"
    make_concept(pack, "cat_b", 11, n=2)
    _, _, messages = run_prompt(slerp_prompt("0.5"), expect_success=False)
    err = [d for e, d in messages if e == "execution_error"][0]
    assert "has 1 vector(s), 'cat_b' has 2" in err["exception_message"]
    missing = slerp_prompt("0.5")
    del missing["4"]["inputs"]["concept_b"]
    ok, text = validate(missing)
    assert not ok and "concept_b" in text
    assert sorted(p.name for p in embeddings.iterdir()) == before


# ---------------------------------------------------------------------------------------------
# DTI Norm Inspector and DTI Save Concept


def test_inspector_contrasts_a_ti_embedding_with_a_dti_concept(pack, embeddings):
    make_concept(pack, "dti_cat", 20)
    ti = torch.randn(1, 32)
    ti = ti / ti.norm() * 15.0  # far above the tiny vocabulary (~0.11)
    safetensors.torch.save_file({"clip_l": ti, "clip_g": torch.randn(1, 48) * 3}, str(embeddings / "inflated.safetensors"))
    prompt = {"1": loader(), "2": load_node("dti_cat.safetensors"),
              "3": {"class_type": "DTINormInspector",
                    "inputs": {"clip": ["1", 1], "concept": ["2", 1], "embedding": "inflated.safetensors", "k": 5}}}
    outputs, executor, _ = run_prompt(prompt)
    report, chart = outputs["3"][0][0], outputs["3"][1][0]
    dti_part, ti_part = report.split("== inflated.safetensors")
    assert "IN distribution" in dti_part and "OUT OF distribution" not in dti_part
    assert "OUT OF distribution" in ti_part and "too large" in ti_part
    assert dti_part.count("nearest by cosine:") == 2 and "</w>" in dti_part  # decoded CLIP tokens
    import re

    probe = [float(x) for x in re.findall(r"position probe accuracy ([0-9.]+)", report)]
    assert probe[0] > probe[2]  # clip_l: the DTI row keeps more position signal than the inflated TI row
    assert chart.shape[0] == 1 and chart.shape[1] > 4 * 280  # four histograms, stacked
    shown = executor.history_result["outputs"]["3"]
    assert shown["images"] and shown["text"][0] == report


def test_save_concept_writes_a_stock_readable_file(pack, embeddings):


    make_concept(pack, "cat_a", 10)
    make_concept(pack, "cat_b", 11)
    prompt = slerp_prompt("")
    prompt["5"] = {"class_type": "DTISaveConcept", "inputs": {"concept": ["4", 1], "name": "halfway", "if_exists": "increment"}}
    prompt["6"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "x"}}
    outputs, _, _ = run_prompt(prompt)
    path = outputs["5"][0][0]
    assert path.endswith("halfway.safetensors")
    saved = safetensors.torch.load_file(path)
    assert torch.allclose(saved["clip_l"], outputs["4"][1][0].encoders["clip_l"].vectors(), atol=1e-7)
    bad = dict(prompt)
    bad["5"] = {"class_type": "DTISaveConcept", "inputs": {"concept": ["4", 1], "name": "../../etc/x", "if_exists": "increment"}}
    ok, text = validate(bad)
    assert not ok and "leave the embeddings folder" in text


def test_corrupt_and_unsafe_files_fail_clearly_and_change_nothing(pack, embeddings):
    import os
    import pickle

    (embeddings / "broken.safetensors").write_bytes(b"\x00not a safetensors file" * 4)

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {embeddings / 'pwned'}",))

    with open(embeddings / "evil.pt", "wb") as f:
        pickle.dump({"string_to_param": {"*": Exploit()}}, f, protocol=2)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in embeddings.iterdir())
    for name, match in (("broken.safetensors", "not a readable safetensors file"), ("evil.pt", "refused to load")):
        _, _, messages = run_prompt({"1": loader(), "2": load_node(name)}, expect_success=False)
        err = [d for e, d in messages if e == "execution_error"][0]
        assert match in err["exception_message"] and name in err["exception_message"], err["exception_message"]
    assert not (embeddings / "pwned").exists()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in embeddings.iterdir()) == before
