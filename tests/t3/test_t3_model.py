"""T3 structure: weight names vs the published files, config round trips, RoPE, KV cache, strict loading."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file
from support.paths import manifest_path

from chatterbox_vllm.checkpoint.weights import CheckpointError
from chatterbox_vllm.models.t3 import T3, T3Cond, T3Config, build_t3, load_t3
from chatterbox_vllm.models.t3.llama import llama3_inv_freq


@pytest.mark.parametrize(
    "config, manifest",
    [(T3Config.english(), "t3_cfg.safetensors.json"), (T3Config.multilingual(), "t3_mtl23ls_v2.safetensors.json")],
    ids=["english", "multilingual"],
)
def test_state_dict_equals_manifest(config: T3Config, manifest: str) -> None:
    with torch.device("meta"):
        model = T3(config)
    got = [(name, list(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in model.state_dict().items()]
    expected = [(t["name"], t["shape"], t["dtype"]) for t in json.loads(manifest_path(manifest).read_text())]
    assert got == expected  # names, shapes, dtypes and order
    # The rotary table is derived, never stored.
    assert [n for n, _ in model.named_buffers()] == ["tfmr.rotary_emb.inv_freq"]
    assert "tfmr.rotary_emb.inv_freq" not in model.state_dict()


def test_published_config_values() -> None:
    en, mtl = T3Config.english(), T3Config.multilingual()
    assert (en.text_tokens_dict_size, mtl.text_tokens_dict_size) == (704, 2454)
    assert (en.num_hidden_layers, en.hidden_size, en.num_attention_heads, en.head_dim) == (30, 1024, 16, 64)
    tokens = (en.start_speech_token, en.stop_speech_token, en.start_text_token, en.stop_text_token)
    assert tokens == (6561, 6562, 255, 0)
    assert (en.text_pos_emb_size, en.speech_pos_emb_size, en.cond_len) == (2050, 4100, 34)


@pytest.mark.parametrize("variant", ["english", "multilingual"])
def test_config_json_round_trip(variant: str) -> None:
    for config in (T3Config.for_variant(variant), T3Config.tiny(variant)):
        data = json.loads(json.dumps(dataclasses.asdict(config)))
        assert T3Config.from_dict(data) == config
    with pytest.raises(ValueError, match="unknown"):
        T3Config.from_dict({"hidden_sizes": 3})


@pytest.mark.parametrize("variant", ["english", "multilingual"])
def test_tiny_keeps_semantics(variant: str) -> None:
    full, tiny = T3Config.for_variant(variant), T3Config.tiny(variant)
    keep = [
        "text_tokens_dict_size", "speech_tokens_dict_size", "start_text_token", "stop_text_token",
        "start_speech_token", "stop_speech_token", "max_text_tokens", "max_speech_tokens", "speaker_embed_size",
        "speech_cond_prompt_len", "perceiver_query_tokens", "emotion_adv", "rope_theta", "rope_factor",
    ]
    assert all(getattr(full, k) == getattr(tiny, k) for k in keep)
    assert tiny.hidden_size < full.hidden_size and tiny.num_hidden_layers < full.num_hidden_layers
    assert tiny.cond_len == full.cond_len


def test_inv_freq_is_bit_identical_to_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    for config in (T3Config.english(), T3Config.tiny("english")):
        hf = {k: v for k, v in config.hf_llama_config().items() if k != "model_type"}
        expected = LlamaRotaryEmbedding(transformers.LlamaConfig(**hf)).inv_freq
        assert expected.dtype == torch.float32
        assert torch.equal(llama3_inv_freq(config), expected)
    # build_t3 materialises from the meta device; the derived buffer must be recomputed, not left empty.
    assert torch.equal(build_t3(T3Config.tiny("english")).tfmr.rotary_emb.inv_freq, llama3_inv_freq(T3Config.tiny()))


def _tiny_model(seed: int = 0) -> T3:
    torch.manual_seed(seed)
    return T3(T3Config.tiny("english")).eval()


def _cond(seed: int = 1, prompt_len: int = 150) -> T3Cond:
    g = torch.Generator().manual_seed(seed)
    spk = torch.randn(1, 256, generator=g)
    return T3Cond(
        speaker_emb=spk / spk.norm(),
        cond_prompt_speech_tokens=torch.randint(0, 6561, (1, prompt_len), generator=g),
        emotion_adv=torch.full((1, 1, 1), 0.7),
    )


@torch.inference_mode()
def test_kv_cache_matches_full_forward() -> None:
    model = _tiny_model()
    text = torch.tensor([255, 5, 17, 300, 2, 0])
    prefix = model.prefill_embeds(_cond(), text, cfg=True)
    speech = model.speech_embeds(torch.randint(0, 6561, (1, 9)).expand(2, -1), 1)
    embeds = torch.cat([prefix, speech], dim=1)
    full = model(embeds)

    # Prefill, then a 3-token chunk on top of the cache (masked path), then single steps; small capacity forces growth.
    cache = model.new_kv_cache(2, 4)
    p = prefix.shape[1]
    parts = [model(embeds[:, :p], cache), model(embeds[:, p : p + 3], cache)]
    parts += [model(embeds[:, j : j + 1], cache) for j in range(p + 3, embeds.shape[1])]
    assert cache.length == embeds.shape[1]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_prefill_layout() -> None:
    model = _tiny_model()
    cond = _cond()
    text = torch.tensor([255, 5, 17, 300, 2, 0])
    embeds = model.prefill_embeds(cond, text, cfg=True)
    lc, lt = model.config.cond_len, text.numel()
    assert embeds.shape == (2, lc + lt + 2, model.config.hidden_size)
    assert torch.equal(embeds[0, :lc], embeds[1, :lc])  # same conditioning in both rows
    pos = model.text_pos_emb.emb.weight[:lt]
    torch.testing.assert_close(embeds[1, lc : lc + lt], pos, atol=0, rtol=0)  # uncond text = positions only
    torch.testing.assert_close(embeds[0, lc : lc + lt], model.text_emb(text) + pos)
    bos = model.speech_emb.weight[6561] + model.speech_pos_emb.emb.weight[0]
    assert torch.equal(embeds[:, -1], bos.expand(2, -1)) and torch.equal(embeds[:, -2], bos.expand(2, -1))
    single = model.prefill_embeds(cond, text, cfg=False)
    assert torch.equal(single[0], embeds[0])


@torch.inference_mode()
def test_conditioning_without_prompt_and_cond_to() -> None:
    model = _tiny_model()
    cond = _cond()
    assert model.prepare_conditioning(cond).shape == (1, 34, model.config.hidden_size)
    assert model.prepare_conditioning(T3Cond(cond.speaker_emb)).shape == (1, 2, model.config.hidden_size)
    half = cond.to("cpu", dtype=torch.float64)
    assert half.speaker_emb.dtype == torch.float64 and half.cond_prompt_speech_tokens.dtype == torch.long
    assert cond.speaker_emb.dtype == torch.float32  # `to` returns a copy


def test_load_t3_strict(tmp_path) -> None:
    model = _tiny_model(3)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "t3_cfg.safetensors"
    save_file(state, str(path))
    loaded = load_t3(path, T3Config.tiny("english"))
    assert not loaded.training
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name

    del state["text_head.weight"]
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="text_head.weight"):
        load_t3(path, T3Config.tiny("english"))
    with pytest.raises(CheckpointError):
        load_t3(tmp_path / "missing.safetensors", T3Config.tiny("english"))
