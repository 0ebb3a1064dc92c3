"""Every file layout round-trips; names cannot escape the folder; pickles cannot run code."""

import json
import os
import pickle

import pytest
import safetensors.torch
import torch

from dti import formats
from dti.concept import Concept, EncoderConcept
from dti.formats import EmbeddingFileError


def dti_encoder(n, d, m_star, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g)
    v = v / v.norm(dim=-1, keepdim=True)
    mu = torch.randn(n, d, generator=g)
    mu = mu / mu.norm(dim=-1, keepdim=True)
    return EncoderConcept(directions=v, norms=torch.full((n,), m_star), mu=mu, m_star=m_star,
                          encoder_id="clip-test", weights_hash="abc123")


def sdxl_concept(name="cat"):
    return Concept(name=name, encoders={"clip_l": dti_encoder(2, 768, 0.387, 1), "clip_g": dti_encoder(2, 1280, 0.4515, 2)},
                   family="sdxl", info={"kappa": 1e-4, "lr": 0.04, "steps_done": 400, "initializer": "cat"})


# ---------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize("bad, why", [
    ("", "empty"), ("   ", "empty"), ("..", "leave the embeddings folder"), (".", "leave the embeddings folder"),
    ("../escape", "leave the embeddings folder"), ("/etc/passwd", "contains a path"), ("a/b", "contains a path"),
    ("a\\b", "contains a path"), ("..\\..\\x", "contains a path"), ("c:evil", "not allowed"), ("what?", "not allowed"),
    (".hidden", "starts with '.'"), ("trailing.", "ends with"), ("two words", "contains a space"),
    ("nul\x00byte", "not allowed"),
])
def test_unsafe_names_are_refused_with_a_reason(bad, why):
    with pytest.raises(EmbeddingFileError, match=why):
        formats.safe_name(bad)


def test_safe_names_are_accepted_and_extension_stripped():
    assert formats.safe_name("my_cat") == "my_cat"
    assert formats.safe_name(" my-cat.safetensors ") == "my-cat"
    assert formats.safe_name("cat.v2") == "cat.v2"


def test_nothing_is_written_outside_the_folder(tmp_path):
    inner = tmp_path / "embeddings"
    inner.mkdir()
    for bad in ("../outside", "/tmp/abs", "sub/../../x"):
        with pytest.raises(EmbeddingFileError):
            formats.save_concept(sdxl_concept(), inner, bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings"]
    assert list(inner.iterdir()) == []


def test_symlinked_name_resolving_outside_is_refused(tmp_path):
    inner = tmp_path / "emb"
    inner.mkdir()
    (inner / "link.safetensors").symlink_to(tmp_path / "target.safetensors")
    with pytest.raises(EmbeddingFileError, match="resolves outside"):
        formats.save_concept(sdxl_concept(), inner, "link", on_exists="overwrite")


# ---------------------------------------------------------------------------------------------
# our own files


def test_sdxl_concept_roundtrip_with_metadata(tmp_path):
    c = sdxl_concept()
    path = formats.save_concept(c, tmp_path, "cat")
    assert path == tmp_path / "cat.safetensors"
    raw = safetensors.torch.load_file(str(path))
    assert sorted(raw) == ["clip_g", "clip_l"]  # exactly the keys stock loaders look up, no extras
    assert raw["clip_l"].dtype == torch.float32
    assert torch.allclose(raw["clip_l"].norm(dim=-1), torch.full((2,), 0.387), rtol=1e-6)
    loaded = formats.load_embedding(path)
    assert loaded.layout == formats.FORMAT_NAME
    back = loaded.to_concept()
    assert back.name == "cat" and back.family == "sdxl" and back.method == "dti"
    for key in ("clip_l", "clip_g"):
        assert torch.allclose(back.encoders[key].directions, c.encoders[key].directions, atol=1e-6)
        assert torch.equal(back.encoders[key].mu, c.encoders[key].mu)
        assert back.encoders[key].m_star == c.encoders[key].m_star
        assert back.encoders[key].encoder_id == "clip-test"
    assert back.info["kappa"] == 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dti-")]  # no temp files left


def test_sd1_concept_is_a_single_emb_params_tensor(tmp_path):
    c = Concept(name="sd1cat", encoders={"clip_l": dti_encoder(3, 768, 0.39, 3)}, family="sd1")
    path = formats.save_concept(c, tmp_path, "sd1cat")
    raw = safetensors.torch.load_file(str(path))
    assert list(raw) == ["emb_params"] and raw["emb_params"].shape == (3, 768)
    assert set(formats.load_embedding(path).vectors) == {"clip_l"}


def test_gemma_concept_uses_the_gemma_key(tmp_path):
    c = Concept(name="g", encoders={"gemma": dti_encoder(1, 2304, 1.77, 4)}, family="lumina2")
    path = formats.save_concept(c, tmp_path, "g")
    assert list(safetensors.torch.load_file(str(path))) == ["gemma"]
    assert formats.load_embedding(path).to_concept().family == "lumina2"


def test_existing_names_increment_overwrite_or_error(tmp_path):
    c = sdxl_concept()
    assert formats.save_concept(c, tmp_path, "cat").name == "cat.safetensors"
    assert formats.save_concept(c, tmp_path, "cat").name == "cat_2.safetensors"
    assert formats.save_concept(c, tmp_path, "cat", on_exists="overwrite").name == "cat.safetensors"
    with pytest.raises(EmbeddingFileError, match="already exists"):
        formats.save_concept(c, tmp_path, "cat", on_exists="error")


def test_tampered_dti_file_is_detected(tmp_path):
    path = formats.save_concept(sdxl_concept(), tmp_path, "cat")
    with safetensors.safe_open(str(path), "pt") as f:
        meta = f.metadata()
    raw = safetensors.torch.load_file(str(path))
    raw["clip_l"] = raw["clip_l"] * 20
    safetensors.torch.save_file(raw, str(path), metadata=meta)
    with pytest.raises(EmbeddingFileError, match="deviate"):
        formats.load_embedding(path)


def test_future_format_version_is_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    safetensors.torch.save_file({"clip_l": torch.randn(1, 768)}, str(path),
                                metadata={"format": "comfyui-dti", "format_version": "99", "dti": "{}"})
    with pytest.raises(EmbeddingFileError, match="format version '99'"):
        formats.load_embedding(path)


# ---------------------------------------------------------------------------------------------
# other tools' layouts


def test_a1111_pt_is_read_through_weights_only(tmp_path):
    t = torch.randn(2, 768)
    path = tmp_path / "a1111.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(t)},
                "name": "a1111", "step": 3000, "sd_checkpoint": "abcd", "sd_checkpoint_name": "v1-5"}, path)
    loaded = formats.load_embedding(path)
    assert loaded.layout == "a1111"
    assert torch.equal(loaded.vectors["clip_l"], t)
    c = loaded.to_concept()
    assert c.method == "imported" and c.encoders["clip_l"].m_star is None
    assert torch.allclose(c.encoders["clip_l"].vectors(), t, atol=1e-6)


def test_kohya_and_onetrainer_layouts(tmp_path):
    k = torch.randn(3, 768)
    safetensors.torch.save_file({"emb_params": k}, str(tmp_path / "kohya.safetensors"))
    assert torch.equal(formats.load_embedding(tmp_path / "kohya.safetensors").vectors["clip_l"], k)
    g = torch.randn(2, 1280)
    safetensors.torch.save_file({"emp_params": g}, str(tmp_path / "ot_g.safetensors"))
    lo = formats.load_embedding(tmp_path / "ot_g.safetensors")
    assert lo.layout == "onetrainer" and torch.equal(lo.vectors["clip_g"], g)
    gem = torch.randn(1, 2304)
    safetensors.torch.save_file({"gemma2_2b": gem}, str(tmp_path / "ot_gemma.safetensors"))
    assert torch.equal(formats.load_embedding(tmp_path / "ot_gemma.safetensors").vectors["gemma"], gem)
    l_, g_ = torch.randn(1, 768), torch.randn(1, 1280)
    safetensors.torch.save_file({"clip_l": l_, "clip_g": g_}, str(tmp_path / "civitai_sdxl.safetensors"))
    lo = formats.load_embedding(tmp_path / "civitai_sdxl.safetensors")
    assert lo.layout == "sdxl" and torch.equal(lo.vectors["clip_g"], g_)


@pytest.mark.parametrize("steps_suffix", ["", "-steps-400"])
@pytest.mark.parametrize("pick", ["learned_embeds", "learned_embeds_2"])
def test_diffusers_sdxl_pair_is_merged(tmp_path, steps_suffix, pick):
    l_, g_ = torch.randn(1, 768), torch.randn(1, 1280)
    safetensors.torch.save_file({"<cat>": l_}, str(tmp_path / f"learned_embeds{steps_suffix}.safetensors"))
    safetensors.torch.save_file({"<cat>": g_}, str(tmp_path / f"learned_embeds_2{steps_suffix}.safetensors"))
    lo = formats.load_embedding(tmp_path / f"{pick}{steps_suffix}.safetensors")
    assert lo.layout == "diffusers-sdxl-pair"
    assert torch.equal(lo.vectors["clip_l"], l_) and torch.equal(lo.vectors["clip_g"], g_)


def test_diffusers_single_bin(tmp_path):
    t = torch.randn(768)
    torch.save({"<dog>": t}, tmp_path / "learned_embeds.bin")
    lo = formats.load_embedding(tmp_path / "learned_embeds.bin")
    assert lo.layout == "diffusers" and lo.vectors["clip_l"].shape == (1, 768)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"string_to_param": {"*": _Exploit(marker)}}, f, protocol=2)
    with pytest.raises(EmbeddingFileError, match="refused to load"):
        formats.load_embedding(path)
    assert not marker.exists()
    # the same through torch.save's zip container
    path2 = tmp_path / "evil2.pt"
    torch.save({"x": _Exploit(marker)}, path2)
    with pytest.raises(EmbeddingFileError, match="refused to load"):
        formats.load_embedding(path2)
    assert not marker.exists()


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b"\x00garbage" * 10), "not a readable safetensors"),
    (lambda p: safetensors.torch.save_file({"emb_params": torch.randn(2, 1024)}, str(p)), r"OpenCLIP-H \(SD2.x\)"),
    (lambda p: safetensors.torch.save_file({"emb_params": torch.full((1, 768), float("nan"))}, str(p)), "NaN"),
    (lambda p: safetensors.torch.save_file({"a": torch.randn(1, 768), "b": torch.randn(1, 768)}, str(p)), "unrecognized layout"),
    (lambda p: safetensors.torch.save_file({"emb_params": torch.randn(2, 3, 768)}, str(p)), "expected \\(n_vectors, width\\)"),
])
def test_bad_files_raise_errors_that_name_file_and_problem(tmp_path, make, match):
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(EmbeddingFileError, match=match) as err:
        formats.load_embedding(path)
    assert "bad.safetensors" in str(err.value)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(EmbeddingFileError, match="no such file"):
        formats.load_embedding(tmp_path / "nope.safetensors")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(EmbeddingFileError, match="unsupported extension"):
        formats.load_embedding(tmp_path / "x.txt")


def test_listing_includes_subfolders_and_skips_temp_files(tmp_path):
    (tmp_path / "sub").mkdir()
    safetensors.torch.save_file({"emb_params": torch.randn(1, 768)}, str(tmp_path / "sub" / "a.safetensors"))
    torch.save({"<x>": torch.randn(768)}, tmp_path / "b.pt")
    (tmp_path / ".dti-123.tmp").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    assert formats.list_embedding_files([str(tmp_path)]) == ["b.pt", "sub/a.safetensors"]


def test_metadata_is_plain_strings_and_json():
    meta = formats.concept_metadata(sdxl_concept())
    assert all(isinstance(v, str) for v in meta.values())
    facts = json.loads(meta["dti"])
    assert facts["encoders"]["clip_g"]["m_star"] == 0.4515
    assert facts["encoders"]["clip_l"]["n_vectors"] == 2


def test_width_decided_layouts_follow_the_connected_models_widths(tmp_path):
    t = torch.randn(2, 32)
    torch.save({"string_to_param": {"*": t}}, tmp_path / "tiny.pt")
    with pytest.raises(formats.UnknownWidthError, match=r"width 32.*clip_l 768 wide, clip_g 1280 wide, gemma 2304 wide"):
        formats.load_embedding(tmp_path / "tiny.pt")
    loaded = formats.load_embedding(tmp_path / "tiny.pt", widths={32: "clip_l", 48: "clip_g"})
    assert torch.equal(loaded.vectors["clip_l"], t)
