"""The Concept record's invariants and pickle-free checkpoints."""

import pytest
import torch

from dti import checkpoint
from dti.concept import Concept, EncoderConcept, describe_width


def test_from_vectors_splits_direction_and_norm():
    v = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    e = EncoderConcept.from_vectors(v)
    assert torch.allclose(e.norms, torch.tensor([5.0, 2.0]))
    assert torch.allclose(e.vectors(), v)
    r = e.rescaled(0.4)
    assert torch.allclose(r.vectors().norm(dim=-1), torch.tensor([0.4, 0.4]))
    assert torch.allclose(r.directions, e.directions) and torch.allclose(r.norms, torch.full_like(r.norms, r.m_star), rtol=1e-5, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(directions=torch.ones(0, 4), norms=torch.ones(0)), "n ≥ 1"),
    (dict(directions=torch.ones(2, 4), norms=torch.ones(2)), "unit rows"),
    (dict(directions=torch.eye(2), norms=torch.ones(3)), "2 directions but 3 norms"),
    (dict(directions=torch.eye(2), norms=torch.tensor([1.0, float("nan")])), "NaN"),
])
def test_encoder_concept_rejects_bad_rows(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EncoderConcept(**kwargs)


def test_zero_rows_and_unknown_encoders():
    with pytest.raises(ValueError, match="all zeros"):
        EncoderConcept.from_vectors(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="unknown encoder keys"):
        Concept(name="x", encoders={"t5": EncoderConcept.from_vectors(torch.ones(1, 3))})
    with pytest.raises(ValueError, match="at least one"):
        Concept(name="x", encoders={})
    assert "SD2" in describe_width(1024)


def test_checkpoint_roundtrip_of_nested_state_and_adamw(tmp_path):
    p = torch.randn(2, 5, requires_grad=True)
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.randn(2, 5)
    opt.step()
    gen = torch.Generator().manual_seed(3)
    state = {"step": 7, "params": {"clip_l": p.detach().clone()}, "optimizer": opt.state_dict(),
             "generator": gen.get_state(), "history": [[1, 0.5, {"clip_l": 0.4}, False]], "tuple": (1, 2.5, None)}
    path = checkpoint.save_checkpoint(state, tmp_path / "ck.safetensors")
    back = checkpoint.load_checkpoint(path)
    assert back["step"] == 7 and back["tuple"] == (1, 2.5, None)
    assert torch.equal(back["params"]["clip_l"], state["params"]["clip_l"])
    assert back["history"] == [[1, 0.5, {"clip_l": 0.4}, False]]
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.1)
    opt2.load_state_dict(back["optimizer"])  # int keys and tensors restored
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    g2 = torch.Generator()
    g2.set_state(back["generator"])
    assert torch.equal(torch.randn(3, generator=g2), torch.randn(3, generator=gen))


def test_checkpoint_rejects_non_checkpoints(tmp_path):
    import safetensors.torch

    safetensors.torch.save_file({"emb_params": torch.randn(1, 768)}, str(tmp_path / "emb.safetensors"))
    with pytest.raises(checkpoint.CheckpointError, match="not a DTI training checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "emb.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="cannot store a object"):
        checkpoint.save_checkpoint({"x": object()}, tmp_path / "x.safetensors")
