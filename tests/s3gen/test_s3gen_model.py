"""S3Gen structure: weight names vs the published files, configs, tiny checkpoints, strict loading, encoder pieces."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import save_file
from support.paths import manifest_path

from chatterbox_vllm.checkpoint.config import load_model_config
from chatterbox_vllm.checkpoint.layout import LAYOUTS
from chatterbox_vllm.checkpoint.weights import CheckpointError, read_state_dict
from chatterbox_vllm.models.s3gen import S3Gen, S3GenConfig, build_s3gen, load_s3gen
from chatterbox_vllm.models.s3gen.encoder import RelPositionMultiHeadedAttention, relative_position_table


def _entries(module: torch.nn.Module) -> list[tuple[str, list[int], str]]:
    return [(n, list(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in module.state_dict().items()]


@pytest.mark.parametrize("manifest", ["s3gen.pt.json", "s3gen.safetensors.json"])
def test_state_dict_equals_manifest(manifest: str) -> None:
    with torch.device("meta"):
        model = S3Gen(S3GenConfig())
    expected = [(t["name"], t["shape"], t["dtype"]) for t in json.loads(manifest_path(manifest).read_text())]
    got = _entries(model)
    if manifest == "s3gen.safetensors.json":  # the published .safetensors lacks the tokenizer's Hann window
        got = [e for e in got if e[0] != "tokenizer.window"]
    assert len(got) == len(expected)
    assert got == expected  # names, shapes, dtypes and order
    assert "trim_fade" not in model.state_dict()
    assert dict(model.named_buffers())["trim_fade"].shape == (960,)


def test_config_json_round_trip() -> None:
    for config in (S3GenConfig(), S3GenConfig.tiny()):
        data = json.loads(json.dumps(dataclasses.asdict(config)))
        assert S3GenConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="unknown"):
        S3GenConfig.from_dict({"flows": {}})


def test_tiny_keeps_semantics() -> None:
    full, tiny = S3GenConfig(), S3GenConfig.tiny()
    assert tiny.sample_rate == full.sample_rate == 24000
    assert tiny.trim_fade_samples == 480
    for name in ("vocab_size", "mel_bins", "spk_embed_dim", "n_timesteps", "token_mel_ratio"):
        assert getattr(tiny.flow, name) == getattr(full.flow, name), name
    assert tiny.speaker_encoder.embedding_size == tiny.flow.spk_embed_dim == 192
    assert tiny.tokenizer.codebook_size == 6561 and tiny.tokenizer.n_mels == 128
    assert tiny.flow.encoder.output_size < full.flow.encoder.output_size


def test_build_matches_constructed_buffers() -> None:
    """`build_s3gen` (meta + to_empty) must recompute every non-learned buffer as the constructor does."""
    torch.manual_seed(0)
    built = build_s3gen(S3GenConfig.tiny())
    constructed = S3Gen(S3GenConfig.tiny())
    persistent = set(constructed.state_dict())
    for name, buf in constructed.named_buffers():
        fixed = name not in persistent or name.startswith("tokenizer.")
        if fixed:
            torch.testing.assert_close(dict(built.named_buffers())[name], buf, rtol=0, atol=0, msg=name)


def test_relative_position_table_and_shift() -> None:
    table = relative_position_table(5, 8, device=torch.device("cpu"), dtype=torch.float32)
    assert table.shape == (1, 9, 8)
    # Row k is relative offset 4 - k: sin(offset * freq) on even channels, cos on odd ones.
    freqs = torch.exp(torch.arange(0, 8, 2, dtype=torch.float32) * -(math.log(10000.0) / 8))
    for k in range(9):
        offset = 4 - k
        torch.testing.assert_close(table[0, k, 0::2], torch.sin(offset * freqs))
        torch.testing.assert_close(table[0, k, 1::2], torch.cos(offset * freqs))
    # rel_shift picks, for query i and key j, the table row of offset i - j.
    scores = torch.randn(2, 3, 5, 9)
    shifted = RelPositionMultiHeadedAttention.rel_shift(scores)
    expected = torch.stack([scores[:, :, i, 4 - i : 9 - i] for i in range(5)], dim=2)
    assert torch.equal(shifted, expected)


def test_attention_ignores_padded_keys() -> None:
    torch.manual_seed(0)
    attn = RelPositionMultiHeadedAttention(2, 16).eval()
    x = torch.randn(1, 6, 16)
    mask = torch.tensor([[[True, True, True, True, False, False]]])
    pos = relative_position_table(6, 16, device=torch.device("cpu"), dtype=torch.float32)
    out = attn(x, mask, pos)
    x2 = x.clone()
    x2[:, 4:] = 100.0  # changing padded frames must not change unpadded outputs
    out2 = attn(x2, mask, pos)
    torch.testing.assert_close(out[:, :4], out2[:, :4])


@pytest.fixture(scope="module")
def tiny_model(english_tiny_checkpoint):
    config = load_model_config(english_tiny_checkpoint, LAYOUTS["english"])
    return load_s3gen(english_tiny_checkpoint / "s3gen.safetensors", config.s3gen), config.s3gen


def test_tiny_checkpoint_forward(tiny_model) -> None:
    model, config = tiny_model
    assert config == S3GenConfig.tiny()
    assert not model.training
    wav_24k = 0.3 * torch.sin(torch.arange(24000 * 2) / 24000 * 2 * math.pi * 220.0)
    ref = model.embed_ref(wav_24k, 24000)
    assert ref["prompt_feat"].shape == (1, 100, 80)
    assert ref["prompt_token"].shape == (1, 50) and ref["prompt_token_len"].tolist() == [50]
    assert ref["embedding"].shape == (1, 192) and ref["prompt_feat_len"] is None
    snapshot = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in ref.items()}

    tokens = torch.randint(0, 6561, (1, 7), generator=torch.Generator().manual_seed(1))
    mel = model.flow_inference(tokens, ref, generator=torch.Generator().manual_seed(3))
    assert mel.shape == (1, 80, 14) and torch.isfinite(mel).all()
    wav = model.inference(tokens, ref, generator=torch.Generator().manual_seed(3))
    assert wav.shape == (1, 14 * 480) and torch.isfinite(wav).all()
    assert torch.all(wav[:, :480] == 0)  # trim_fade silences the first 20 ms
    again = model.inference(tokens, ref, generator=torch.Generator().manual_seed(3))
    assert torch.equal(wav, again)  # one generator drives every draw
    for key, value in snapshot.items():  # the caller's ref dict is left as it was
        if torch.is_tensor(value):
            assert ref[key].dtype == value.dtype and torch.equal(ref[key], value), key


@pytest.mark.parametrize("samples", [24000 + 470, 24000 + 200, 36000])
def test_tiny_embed_ref_lengths_reconciled(tiny_model, samples: int) -> None:
    """Tokens are cut to at most half the mel frames, and prompt_token_len follows (as the reference does)."""
    model, _ = tiny_model
    wav = 0.1 * torch.randn(samples, generator=torch.Generator().manual_seed(samples))
    ref = model.embed_ref(wav, 24000)
    frames, tokens = ref["prompt_feat"].shape[1], ref["prompt_token"].shape[1]
    assert frames == samples // 480
    mel_16k_frames = math.ceil(samples * 2 / 3) // 160  # torchaudio-style resampling keeps ceil(N * 2/3) samples
    assert tokens == min(frames // 2, math.ceil(mel_16k_frames / 4))
    assert ref["prompt_token_len"].tolist() == [tokens]
    # A 16 kHz clip is resampled to 24 kHz for the mel and used as is for the tokens.
    n16 = samples * 2 // 3
    ref16 = model.embed_ref(wav[:n16], 16000)
    assert ref16["prompt_feat"].shape[1] == math.ceil(n16 * 3 / 2) // 480


def test_tiny_out_of_range_tokens_rejected(tiny_model) -> None:
    model, _ = tiny_model
    ref = model.embed_ref(torch.zeros(24000), 24000)
    with pytest.raises(ValueError, match="6561"):
        model.flow_inference(torch.tensor([[1, 6561]]), ref)


def test_misshaped_tensor_names_file_and_tensor(english_tiny_checkpoint, tmp_path) -> None:
    config = load_model_config(english_tiny_checkpoint, LAYOUTS["english"]).s3gen
    state = read_state_dict(english_tiny_checkpoint / "s3gen.safetensors")
    name = "flow.encoder_proj.weight"
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
    bad = tmp_path / "s3gen.safetensors"
    save_file(state, str(bad))
    with pytest.raises(CheckpointError, match=rf"{bad}.*{name}"):
        load_s3gen(bad, config)


def test_window_may_be_absent_only_from_safetensors(english_tiny_checkpoint, tmp_path) -> None:
    config = load_model_config(english_tiny_checkpoint, LAYOUTS["english"]).s3gen
    state = read_state_dict(english_tiny_checkpoint / "s3gen.safetensors")
    assert "tokenizer.window" not in state  # as the published file
    model = load_s3gen(english_tiny_checkpoint / "s3gen.safetensors", config)
    assert torch.equal(model.tokenizer.window, torch.hann_window(config.tokenizer.n_fft))
    pt = tmp_path / "s3gen.pt"
    torch.save(state, pt)  # s3gen.pt is loaded strictly by the reference: the window must be there
    with pytest.raises(CheckpointError, match="tokenizer.window"):
        load_s3gen(pt, config)
    state["tokenizer.window"] = torch.hann_window(config.tokenizer.n_fft)
    torch.save(state, pt)
    load_s3gen(pt, config)


def test_constructible_on_meta_and_config_names() -> None:
    with torch.device("meta"):
        model = S3Gen(S3GenConfig.tiny())
    assert model.flow.decoder.estimator.final_proj.weight.is_meta
    assert S3GenConfig().hift.samples_per_frame == 480
    assert S3GenConfig().flow.decoder.inference_cfg_rate == 0.7


def test_cosine_time_grid() -> None:
    from chatterbox_vllm.models.s3gen.flow_matching import time_grid

    t = time_grid(10, "cosine", device=torch.device("cpu"), dtype=torch.float32)
    assert t.shape == (11,) and t[0] == 0 and abs(float(t[-1]) - 1) < 1e-7
    expected = 1 - torch.cos(torch.linspace(0, 1, 11, dtype=torch.float64) * math.pi / 2)
    torch.testing.assert_close(t.double(), expected, atol=1e-7, rtol=0)
    assert torch.all(t.diff() > 0) and t.diff()[-1] > t.diff()[0]  # denser near t = 0


def test_estimator_masks_padding() -> None:
    """Padded frames are zero at the output and do not change real frames; rows of a batch do not mix."""
    from chatterbox_vllm.models.s3gen.config import EstimatorConfig
    from chatterbox_vllm.models.s3gen.estimator import ConditionalDecoder

    torch.manual_seed(0)
    est = ConditionalDecoder(EstimatorConfig.tiny()).eval()
    b, t = 2, 12
    x, mu, cond = torch.randn(b, 80, t), torch.randn(b, 80, t), torch.randn(b, 80, t)
    spks, times = torch.randn(b, 80), torch.rand(b)
    mask = torch.ones(b, 1, t)
    mask[1, :, 9:] = 0
    out = est(x, mask, mu, times, spks, cond)
    assert out.shape == (b, 80, t)
    assert torch.all(out[1, :, 9:] == 0)
    x2, mu2 = x.clone(), mu.clone()
    x2[1, :, 9:] = 50.0
    mu2[1, :, 9:] = -50.0
    out2 = est(x2, mask, mu2, times, spks, cond)
    torch.testing.assert_close(out2, out, atol=1e-5, rtol=1e-5)
    # Row 1 alone, truncated to its real frames, gives the same result: batching does not mix rows.
    alone = est(x[1:, :, :9], mask[1:, :, :9], mu[1:, :, :9], times[1:], spks[1:], cond[1:, :, :9])
    torch.testing.assert_close(alone, out[1:, :, :9], atol=1e-5, rtol=1e-5)


def test_cfg_combination() -> None:
    """velocity = 1.7 * v(x | mu, spks, cond) - 0.7 * v(x | 0, 0, 0)."""
    from chatterbox_vllm.models.s3gen.config import CFMConfig
    from chatterbox_vllm.models.s3gen.flow_matching import ConditionalCFM

    torch.manual_seed(0)
    cfm = ConditionalCFM(CFMConfig.tiny()).eval()
    x, mu, cond = torch.randn(1, 80, 6), torch.randn(1, 80, 6), torch.randn(1, 80, 6)
    spks, mask, t = torch.randn(1, 80), torch.ones(1, 1, 6), torch.tensor([0.3])
    v, inputs = cfm.velocity(x, mask, mu, t, spks, cond)
    est = cfm.estimator
    v_c = est(x, mask, mu, t, spks, cond)
    v_u = est(x, mask, torch.zeros_like(mu), t, torch.zeros_like(spks), torch.zeros_like(cond))
    torch.testing.assert_close(v, 1.7 * v_c - 0.7 * v_u, atol=1e-5, rtol=1e-5)
    assert inputs["x"].shape == (2, 80, 6) and torch.all(inputs["mu"][1] == 0)


def test_tiny_drop_last_token_audio(tiny_model) -> None:
    """Upstream's cut of the last token's audio: a prefix of the 0.1.7 output, 960 * (T - 1) samples long."""
    model, _ = tiny_model
    ref = model.embed_ref(0.1 * torch.randn(24000, generator=torch.Generator().manual_seed(5)), 24000)
    tokens = torch.randint(0, 6561, (1, 6), generator=torch.Generator().manual_seed(2))
    full = model.inference(tokens, ref, generator=torch.Generator().manual_seed(9))
    cut = model.inference(tokens, ref, generator=torch.Generator().manual_seed(9), drop_last_token_audio=True)
    assert full.shape == (1, 6 * 960) and cut.shape == (1, 5 * 960)
    assert torch.equal(cut, full[:, : 5 * 960])
    one = model.inference(tokens[:, :1], ref, generator=torch.Generator().manual_seed(9), drop_last_token_audio=True)
    assert one.shape == (1, 960)  # never less than one token's audio, as upstream's max(1, T - 1)


def test_tiny_batch_matches_single(tiny_model) -> None:
    """Two requests in one batch (same reference) give each request's own output, with per-row noise injected."""
    model, _ = tiny_model
    ref = model.embed_ref(0.1 * torch.randn(24000, generator=torch.Generator().manual_seed(6)), 24000)
    tokens = torch.randint(0, 6561, (2, 5), generator=torch.Generator().manual_seed(4))
    frames = ref["prompt_feat"].shape[1] + 10
    noise = torch.randn(2, 80, frames, generator=torch.Generator().manual_seed(8))
    batched = model.flow_inference(tokens, ref, noise=noise)
    for row in range(2):
        single = model.flow_inference(tokens[row : row + 1], ref, noise=noise[row : row + 1])
        torch.testing.assert_close(batched[row : row + 1], single, atol=1e-5, rtol=1e-5)


def test_missing_tensor_names_file_and_tensor(english_tiny_checkpoint, tmp_path) -> None:
    config = load_model_config(english_tiny_checkpoint, LAYOUTS["english"]).s3gen
    state = read_state_dict(english_tiny_checkpoint / "s3gen.safetensors")
    name = "flow.decoder.estimator.mid_blocks.0.1.0.attn1.to_q.weight"
    del state[name]
    bad = tmp_path / "s3gen.safetensors"
    save_file(state, str(bad))
    with pytest.raises(CheckpointError, match=rf"{bad}.*{name}"):
        load_s3gen(bad, config)
