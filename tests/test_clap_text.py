"""CLAP text branch against the golden reference and the full-size key manifests."""
import numpy as np
import pytest
import torch

from tests.reference import assert_close, load_config, load_io, load_manifest, load_weights
from training.models.clap_text import ClapText, ClapTextConfig

COMPONENT = "clap_text"
REWAS_PREFIX = "cond_stage_models.0.model."
CLAP_PREFIX = "module."
TEXT_PARTS = ("text_branch.", "text_projection.")
# Written by transformers < 4.31 into the CLAP file, deleted by the original loader,
# a non-persistent buffer of RobertaModel here.
STALE_BUFFER = "text_branch.embeddings.position_ids"


@pytest.fixture(scope="module")
def io():
    return load_io(COMPONENT)


@pytest.fixture(scope="module")
def model():
    m = ClapText(ClapTextConfig.from_reference(load_config(COMPONENT))).eval()
    sd = load_weights(COMPONENT)
    m.load_state_dict({k.removeprefix(REWAS_PREFIX): v for k, v in sd.items()}, strict=True)
    return m


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


@torch.no_grad()
def test_padded_512(model, io):
    ids, mask = _t(io["input_ids_pad512"]), _t(io["attention_mask_pad512"])
    pooled, projected = model.pooled_and_projected(ids, mask)
    assert_close("clap_text/pooler_output_pad512", pooled, io["pooler_output_pad512"])
    assert_close("clap_text/projection_pad512", projected, io["projection_pad512"])
    assert_close("clap_text/embedding_pad512", model(ids, mask), io["embedding_pad512"])


@torch.no_grad()
def test_dynamic_length(model, io):
    emb = model(_t(io["input_ids_dynamic"]), _t(io["attention_mask_dynamic"]))
    assert_close("clap_text/embedding_dynamic", emb, io["embedding_dynamic"])
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(emb)), atol=1e-6)


@torch.no_grad()
def test_each_sequence_alone_unpadded(model, io):
    ids = io["input_ids_dynamic"]
    emb = torch.cat([model(_t(ids[i:i + 1, :n]), torch.ones(1, n, dtype=torch.int64))
                     for i, n in enumerate(io["seq_lengths"])])
    assert_close("clap_text/embedding_unpadded_single", emb, io["embedding_unpadded_single"])


@torch.no_grad()
def test_unconditional_is_empty_prompt(model, io):
    """get_unconditional_condition(B) = embedding of "" = ids [bos, eos], shaped (B, 1, D)."""
    cfg = model.config
    empty = [cfg.bos_token_id, cfg.eos_token_id]
    rows = [i for i, n in enumerate(io["seq_lengths"]) if list(io["input_ids_dynamic"][i, :n]) == empty]
    assert rows, "the reference set has no empty-prompt row"
    ref = io["unconditional_condition_B2"]
    emb = model(torch.tensor([empty] * ref.shape[0]), torch.ones(ref.shape[0], 2, dtype=torch.int64))
    assert_close("clap_text/unconditional_condition_B2", emb.unsqueeze(1), ref)
    assert_close("clap_text/empty_prompt_row", emb[0], io["embedding_dynamic"][rows[0]])


def _model_keys(m: torch.nn.Module) -> dict:
    return {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in m.state_dict().items()}


def _manifest_text_keys(checkpoint: str, prefix: str) -> dict:
    keys = load_manifest(checkpoint)["keys"]
    return {k.removeprefix(prefix): v for k, v in keys.items() if k.removeprefix(prefix).startswith(TEXT_PARTS)}


def test_full_size_keys_and_counts():
    with torch.device("meta"):
        m = ClapText(ClapTextConfig.rewas_m())
    ours = _model_keys(m)
    assert ours == _manifest_text_keys("audioldm_m_rewas_vggsound.ckpt", REWAS_PREFIX)

    clap = _manifest_text_keys("clap_music_speech_audioset_epoch_15_esc_89.98.pt", CLAP_PREFIX)
    assert set(clap) - set(ours) == {STALE_BUFFER} and set(ours) <= set(clap)
    assert STALE_BUFFER in dict(m.named_buffers())  # present, but not in state_dict
    assert ours == {k: v for k, v in clap.items() if k != STALE_BUFFER}

    n_branch = sum(p.numel() for p in m.text_branch.parameters())
    n_proj = sum(p.numel() for p in m.text_projection.parameters())
    rewas = load_manifest("audioldm_m_rewas_vggsound.ckpt")["param_counts"]
    assert (n_branch, n_proj) == (rewas["clap_text_branch_roberta"], rewas["clap_text_projection"])
    counts = load_manifest("clap_music_speech_audioset_epoch_15_esc_89.98.pt")["param_counts"]
    assert (n_branch, n_proj) == (counts["text_branch"], counts["text_projection"])


def test_reference_param_counts():
    cfg = load_config(COMPONENT)
    m = ClapText(ClapTextConfig.from_reference(cfg))
    assert sum(p.numel() for p in m.text_branch.parameters()) == cfg["param_count_text_branch"]
    assert sum(p.numel() for p in m.text_projection.parameters()) == cfg["param_count_text_projection"]
