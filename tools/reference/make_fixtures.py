#!/usr/bin/env python3
"""Golden fixtures: the reference (chatterbox-tts 0.1.7) run on our seed-0 random checkpoints.

Runs in the oracle venv only (never imported by the product, never run by CI):

    HF_HUB_OFFLINE=1 /work/oracle/venv/bin/python tools/reference/make_fixtures.py \
        --ckpt-en /work/ckpt/english-full-seed0 --ckpt-mtl /work/ckpt/multilingual-full-seed0 \
        [--out tests/fixtures/golden] [--skip-generate]

The checkpoints are made by our own generator (`chatterbox-vllm make-checkpoint --size full --seed 0`), loaded
through the reference's from_local(). Per stage, a `<stage>.safetensors` of tensors and a `<stage>.json` of inputs
and notes (with a `tensors` index) are written, in the same format as the shared reference kit's golden/:

  tokenization.json       punc_norm, the exact string the reference hands to the HF tokenizer, ids
  t3_<variant>            teacher-forced T3: embeddings, final hidden, cond/uncond/CFG logits, sampling probs
  audio_frontends         VoiceEncoder, S3 tokenizer, S3Gen embed_ref and prepare_conditionals on a synthetic clip
  s3gen                   flow (encoder, CFM with its noise captured) and HiFT (random draws captured) on 50 tokens
  hift_voiced             HiFT's source path with a voiced f0 (random weights predict an unvoiced one)
  summary.json            versions, per-stage timings, and (unless --skip-generate) full generate() results

Every random draw the reference makes is captured and stored, so a re-implementation can inject it and compare
deterministically. Where this script assembles a reference path from the reference's parts (T3 teacher forcing,
the sampling processors), it cross-checks against the path the reference itself runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.distributions.uniform import Uniform  # noqa: E402
from transformers.generation.logits_process import (  # noqa: E402
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TopPLogitsWarper,
)

import chatterbox  # noqa: E402
import chatterbox.mtl_tts as mtl_tts  # noqa: E402
import chatterbox.tts as en_tts  # noqa: E402
from chatterbox.models.s3gen.utils.mel import mel_spectrogram as s3gen_mel_spectrogram  # noqa: E402
from chatterbox.models.t3.inference.t3_hf_backend import T3HuggingfaceBackend  # noqa: E402
from chatterbox.models.t3.modules.cond_enc import T3Cond  # noqa: E402
from chatterbox.models.voice_encoder.melspec import melspectrogram as ve_melspectrogram  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SPEECH_VOCAB = 6561


# ------------------------------------------------------------------------------------------------- bookkeeping
class Clock:
    """Named wall-clock timings for summary.json."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = round(time.perf_counter() - start, 3)
            print(f"[time] {key}: {self.seconds[key]} s", flush=True)


def sha256_of(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def write_fixture(out: Path, stage: str, tensors: dict[str, torch.Tensor], notes: dict) -> None:
    """`<stage>.safetensors` plus `<stage>.json` = notes + {"tensors": {name: {shape, dtype}}}."""
    plain = {k: v.detach().clone().contiguous().cpu() for k, v in tensors.items()}
    save_file(plain, str(out / f"{stage}.safetensors"))
    index = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in plain.items()}
    with open(out / f"{stage}.json", "w", encoding="utf-8") as f:
        json.dump({**notes, "tensors": index}, f, ensure_ascii=False, indent=1)
    print(f"wrote {stage}.safetensors ({(out / f'{stage}.safetensors').stat().st_size} bytes)", flush=True)


class RandomTap:
    """Records every `torch.randn_like` and `Uniform.sample` draw made while active (the only random calls on the
    S3Gen inference path), in order, so the fixtures can store them."""

    def __init__(self) -> None:
        self.draws: list[tuple[str, torch.Tensor]] = []

    def __enter__(self) -> "RandomTap":
        self._randn_like, self._sample = torch.randn_like, Uniform.sample
        tap = self

        def randn_like(*args, **kwargs):
            value = tap._randn_like(*args, **kwargs)
            tap.draws.append(("randn_like", value.detach().clone()))
            return value

        def sample(dist, sample_shape=torch.Size()):
            value = tap._sample(dist, sample_shape)
            tap.draws.append(("Uniform.sample", value.detach().clone()))
            return value

        torch.randn_like, Uniform.sample = randn_like, sample
        return self

    def __exit__(self, *exc) -> None:
        torch.randn_like, Uniform.sample = self._randn_like, self._sample

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.draws]


class EncodeSpy:
    """Stands in for the reference's inner `tokenizers.Tokenizer` to record the exact string it is asked to encode."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.last: str | None = None

    def encode(self, text, *args, **kwargs):
        self.last = text
        return self.inner.encode(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


# ----------------------------------------------------------------------------------------------------- inputs
EN_TEXTS = [
    "Hello world, this is a test.",
    "the quick brown fox jumps over the lazy dog",
    "Wait... what?  Really…  Yes: it's   “quoted” text; with ‘single’ quotes — and – dashes - here",
    "Numbers 1, 22 and 333! [laughter] Ha.",
    "",
]
MTL_TEXTS = {
    "en": "Hello world, this is a test.",
    "fr": "Bonjour, comment ça va ? Ceci est un test… d'accord !",
    "de": "Guten Tag! Wie geht es Ihnen? Größe und Übung.",
    "ja": "今日は良い天気ですね。カタカナも少し。",
    "zh": "你好，今天天气真不错。我们学习语言。",
    "ko": "안녕하세요, 반갑습니다.",
    "he": "שלום, מה שלומך?",
    "ru": "Привет, как дела?",
    "ar": "مرحبا، كيف حالك؟",
    "hi": "नमस्ते, आप कैसे हैं?",
}
T3_TEXT = {"english": ("Hello world, this is a test.", None),
           "multilingual": ("Bonjour, ceci est un petit test du modèle.", "fr")}  # fmt: skip
T3_SPEECH_SEED, T3_N_SPEECH = 4321, 16
S3GEN_TOKEN_SEED, S3GEN_N_TOKENS, S3GEN_TORCH_SEED = 2468, 50, 777
HIFT_VOICED_SEED, HIFT_VOICED_FRAMES = 99, 99
CLIP_SEED, CLIP_SECONDS = 1234, 3.0


def synthetic_clip(sr: int, seconds: float = CLIP_SECONDS, seed: int = CLIP_SEED) -> torch.Tensor:
    """Linear chirp 150 -> 3000 Hz at amplitude 0.4 with 50 ms linear fade in/out, plus 0.02 * N(0, 1) noise;
    computed in float64, returned as float32."""
    n = int(round(sr * seconds))
    t = torch.arange(n, dtype=torch.float64) / sr
    lo, hi = 150.0, 3000.0
    tone = 0.4 * torch.sin(2 * np.pi * (lo * t + (hi - lo) / (2 * seconds) * t**2))
    ramp = int(0.05 * sr)
    envelope = torch.ones(n, dtype=torch.float64)
    envelope[:ramp] = torch.linspace(0, 1, ramp, dtype=torch.float64)
    envelope[-ramp:] = torch.linspace(1, 0, ramp, dtype=torch.float64)
    noise = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (tone * envelope + 0.02 * noise).to(torch.float32)


# ------------------------------------------------------------------------------------------------ the harness
class Harness:
    def __init__(self, en, mtl, out: Path, clock: Clock) -> None:
        self.en, self.mtl, self.out, self.clock = en, mtl, out, clock

    # ------------------------------------------------------------------------------------------ tokenization
    def tokenization(self) -> None:
        en_spy = EncodeSpy(self.en.tokenizer.tokenizer)
        mtl_spy = EncodeSpy(self.mtl.tokenizer.tokenizer)
        self.en.tokenizer.tokenizer, self.mtl.tokenizer.tokenizer = en_spy, mtl_spy
        try:
            english = []
            for text in EN_TEXTS:
                norm = en_tts.punc_norm(text)
                ids = self.en.tokenizer.text_to_tokens(norm)[0].tolist()
                english.append({"text": text, "punc_norm": norm, "encoded_string": en_spy.last, "ids": ids,
                                "t3_text_tokens": [255, *ids, 0]})  # fmt: skip
            multilingual = []
            for lang, text in MTL_TEXTS.items():
                norm = mtl_tts.punc_norm(text)
                ids = self.mtl.tokenizer.text_to_tokens(norm, language_id=lang)[0].tolist()
                multilingual.append({"language_id": lang, "text": text, "punc_norm": norm,
                                     "encoded_string": mtl_spy.last, "ids": ids, "t3_text_tokens": [255, *ids, 0]})
        finally:
            self.en.tokenizer.tokenizer, self.mtl.tokenizer.tokenizer = en_spy.inner, mtl_spy.inner
        optional = {}
        for label, module in (("zh word segmentation (spacy_pkuseg)", "spacy_pkuseg"),
                              ("he diacritics (dicta_onnx)", "dicta_onnx"),
                              ("ru stress (russian_text_stresser)", "russian_text_stresser")):  # fmt: skip
            present = _importable(module)
            optional[label] = "installed and used" if present else "NOT installed -> skipped"
        optional["ja (pykakasi " + _version("pykakasi") + ")"] = "installed and used"
        result = {
            "english": english,
            "multilingual": multilingual,
            "notes": {
                "english_tokenizer": "tokenizer.json of the checkpoint (genuine published file, sha256 d71e3a44...)",
                "multilingual_tokenizer": "SYNTHETIC grapheme_mtl_merged_expanded_v1.json and 29-entry Cangjie5_TC.json "
                                          "written by chatterbox_vllm.random_checkpoint (the genuine files "
                                          "were not available); encoded_string is what the reference passed to the "
                                          "HF tokenizer (recorded, not re-derived)",
                "optional_processors_in_this_oracle": optional,
            },
        }
        with open(self.out / "tokenization.json", "w", encoding="utf-8") as f:
            json.dump(result, f, ensure_ascii=False, indent=1)
        print("wrote tokenization.json", flush=True)

    # -------------------------------------------------------------------------------------- T3 teacher forcing
    def t3(self, variant: str, *, cfg_weight=0.5, exaggeration=0.5, temperature=0.8, repetition_penalty=1.2,
           min_p=0.05, top_p=1.0) -> None:  # fmt: skip
        model = self.en if variant == "english" else self.mtl
        text, lang = T3_TEXT[variant]
        t3, hp = model.t3, model.t3.hp
        if variant == "english":
            norm = en_tts.punc_norm(text)
            ids = model.tokenizer.text_to_tokens(norm)
        else:
            norm = mtl_tts.punc_norm(text)
            ids = model.tokenizer.text_to_tokens(norm, language_id=lang)
        # as generate(): two identical rows (cond, uncond), start/stop text tokens around them
        text_tokens = F.pad(F.pad(torch.cat([ids, ids]), (1, 0), value=hp.start_text_token),
                            (0, 1), value=hp.stop_text_token).long()  # fmt: skip
        speech = torch.randint(0, SPEECH_VOCAB, (T3_N_SPEECH,), generator=torch.Generator().manual_seed(T3_SPEECH_SEED),
                               dtype=torch.long)  # fmt: skip
        base = model.conds.t3
        cond = T3Cond(speaker_emb=base.speaker_emb.clone(),
                      cond_prompt_speech_tokens=base.cond_prompt_speech_tokens.clone(),
                      emotion_adv=exaggeration * torch.ones(1, 1, 1))  # fmt: skip
        backend = T3HuggingfaceBackend(config=t3.cfg, llama=t3.tfmr, speech_enc=t3.speech_emb,
                                       speech_head=t3.speech_head, alignment_stream_analyzer=None)  # fmt: skip

        with torch.inference_mode():
            with self.clock(f"t3_{variant}_teacher_forced_forward"):
                # T3.inference(): prefix = cond | text | BOS (speech position 0), then it appends another BOS at
                # position 0; generated token i is fed at speech position i + 1.
                prefix, len_cond = t3.prepare_input_embeds(
                    t3_cond=cond, text_tokens=text_tokens,
                    speech_tokens=hp.start_speech_token * torch.ones_like(text_tokens[:, :1]), cfg_weight=cfg_weight)
                bos_id = torch.tensor([[hp.start_speech_token]], dtype=torch.long)
                bos = t3.speech_emb(bos_id) + t3.speech_pos_emb.get_fixed_embedding(0)
                fed = t3.speech_emb(speech[None]) + t3.speech_pos_emb.get_fixed_embedding(
                    torch.arange(1, T3_N_SPEECH + 1)[None])
                bos, fed = torch.cat([bos, bos]), torch.cat([fed, fed])
                inputs = torch.cat([prefix, bos, fed], dim=1)
                full = backend(inputs_embeds=inputs, past_key_values=None, use_cache=False, output_attentions=False,
                               output_hidden_states=True, return_dict=True)  # fmt: skip
                first = prefix.size(1)  # sequence index of the 2nd BOS
                logits = full.logits[:, first:first + T3_N_SPEECH + 1]
            cond_logits, uncond_logits = logits[0], logits[1]
            cfg_logits = cond_logits + cfg_weight * (cond_logits - uncond_logits)

            with self.clock(f"t3_{variant}_kv_cache_path_{T3_N_SPEECH + 1}_steps"):
                step = backend(inputs_embeds=torch.cat([prefix, bos], dim=1), past_key_values=None, use_cache=True,
                               output_attentions=False, output_hidden_states=True, return_dict=True)  # fmt: skip
                incremental = [step.logits[:, -1]]
                for i in range(T3_N_SPEECH):
                    step = backend(inputs_embeds=fed[:, i:i + 1], past_key_values=step.past_key_values,
                                   output_attentions=False, output_hidden_states=True, return_dict=True)  # fmt: skip
                    incremental.append(step.logits[:, -1])
            kv_diff = (torch.stack(incremental, dim=1) - logits).abs().max().item()

            # the logits processors of T3.inference(), applied to CFG rows 0..3 with history [BOS] + speech[:k]
            processors = [RepetitionPenaltyLogitsProcessor(penalty=float(repetition_penalty)),
                          MinPLogitsWarper(min_p=min_p), TopPLogitsWarper(top_p=top_p)]  # fmt: skip
            history = torch.cat([bos_id[0], speech])
            rows = []
            for k in range(4):
                seen = history[: k + 1][None]
                row = processors[0](seen, cfg_logits[k:k + 1].clone())
                if temperature != 1.0:
                    row = row / temperature
                for proc in processors[1:]:
                    row = proc(seen, row)
                rows.append(torch.softmax(row, dim=-1)[0])

        tensors = {
            "text_tokens": text_tokens, "speech_tokens": speech,
            "speaker_emb": cond.speaker_emb, "cond_prompt_speech_tokens": cond.cond_prompt_speech_tokens,
            "emotion_adv": cond.emotion_adv, "cond_emb": prefix[:1, :len_cond], "inputs_embeds": inputs,
            "final_hidden": full.hidden_states[-1], "logits_cond": cond_logits, "logits_uncond": uncond_logits,
            "logits_cfg": cfg_logits, "sampling_probs_steps0to3": torch.stack(rows),
        }
        notes = {
            "variant": variant, "text": text, "language_id": lang, "punc_norm": norm,
            "cfg_weight": cfg_weight, "exaggeration": exaggeration, "len_cond": len_cond,
            "len_text": text_tokens.size(1), "prefix_len_incl_both_bos": first + 1, "seq_len": inputs.size(1),
            "speech_tokens_generator": f"torch.Generator().manual_seed({T3_SPEECH_SEED}); "
                                       f"randint(0,6561,({T3_N_SPEECH},))",
            "logits_rows": f"row k (0..{T3_N_SPEECH}) = speech_head output at sequence index {first}+k, i.e. the "
                           "logits that predict speech token k; row 0 is at the 2nd BOS",
            "cfg_formula": "cfg = cond + cfg_weight*(cond - uncond)",
            "kv_cache_vs_full_forward_max_abs_diff": kv_diff,
            "attn_implementation": getattr(t3.tfmr.config, "_attn_implementation", None),
            "sampling": {"rows": "probs after repetition_penalty(history=[BOS]+speech[:k]) -> /temperature -> "
                                 "min_p -> top_p -> softmax, for CFG rows k=0..3",
                         "temperature": temperature, "repetition_penalty": repetition_penalty, "min_p": min_p,
                         "top_p": top_p},
        }  # fmt: skip
        write_fixture(self.out, f"t3_{variant}", tensors, notes)

    # --------------------------------------------------------------------------------------- audio frontends
    def audio_frontends(self, wav24: torch.Tensor, wav16: torch.Tensor, wav_path: Path) -> None:
        model = self.en
        ve, s3 = model.ve, model.s3gen
        saved_conds = model.conds
        with self.clock("voice_encoder_embeds_from_wavs_3s"):
            embedding = ve.embeds_from_wavs([wav16.numpy()], sample_rate=16000)
        trimmed = librosa.effects.trim(wav16.numpy(), top_db=20)[0]
        ve_mel = ve_melspectrogram(trimmed, ve.hp).T.astype(np.float32)
        with self.clock("s3_tokenizer_forward_3s"):
            tokens, token_lens = s3.tokenizer.forward([wav16.numpy()])
            tokens_150, _ = s3.tokenizer.forward([wav16.numpy()], max_len=150)
        s3_log_mel = s3.tokenizer.log_mel_spectrogram(wav16)
        with self.clock("s3gen_embed_ref_3s_24k"):
            ref = s3.embed_ref(wav24.numpy(), 24000, device="cpu")
        mel24 = s3gen_mel_spectrogram(wav24[None])
        try:
            with self.clock("prepare_conditionals_3s"):
                model.prepare_conditionals(str(wav_path), exaggeration=0.5)
            prepared = model.conds
        finally:
            model.conds = saved_conds
        tensors = {
            "wav_24k": wav24, "wav_16k": wav16,
            "ve_trimmed_wav_16k": torch.from_numpy(trimmed.astype(np.float32)),
            "ve_mel": torch.from_numpy(ve_mel), "ve_embedding": torch.from_numpy(embedding),
            "s3tok_log_mel": s3_log_mel, "s3tok_tokens": tokens, "s3tok_token_lens": token_lens,
            "s3tok_tokens_max_len_150": tokens_150,
            "s3gen_mel_24k": mel24,
            "embed_ref_prompt_token": ref["prompt_token"], "embed_ref_prompt_token_len": ref["prompt_token_len"],
            "embed_ref_prompt_feat": ref["prompt_feat"], "embed_ref_embedding": ref["embedding"],
            "prepare_conditionals_t3_speaker_emb": prepared.t3.speaker_emb,
            "prepare_conditionals_t3_cond_prompt_speech_tokens": prepared.t3.cond_prompt_speech_tokens,
            "prepare_conditionals_gen_prompt_token": prepared.gen["prompt_token"],
            "prepare_conditionals_gen_prompt_feat": prepared.gen["prompt_feat"],
            "prepare_conditionals_gen_embedding": prepared.gen["embedding"],
        }  # fmt: skip
        notes = {
            "wav": f"synthetic_clip(): {CLIP_SECONDS} s linear chirp 150->3000 Hz amplitude 0.4, 50 ms linear fades, "
                   f"+ 0.02*randn (torch.Generator().manual_seed({CLIP_SEED}), float64) -> float32, generated at "
                   "24 kHz; wav_16k = librosa.resample(wav_24k, orig_sr=24000, target_sr=16000) (soxr_hq), as "
                   "prepare_conditionals() does",
            "ve": "VoiceEncoder.embeds_from_wavs([wav_16k], sample_rate=16000): librosa.effects.trim(top_db=20), "
                  "40-mel power spectrogram (n_fft 400, hop 160), partials of 160 frames every 77 frames "
                  "(rate 1.3, min_coverage 0.8), LSTM(3x256) -> proj -> relu -> L2 each, mean -> L2; ve_mel is the "
                  "mel of the trimmed wav, (frames, 40)",
            "s3tok": "S3Tokenizer.forward([wav_16k]) and with max_len=150; s3tok_log_mel = log_mel_spectrogram(wav_16k)",
            "embed_ref": "S3Gen.embed_ref(wav_24k, 24000): 24 kHz 80-mel (n_fft 1920, hop 480, fmax 8000); torchaudio "
                         "Resample 24k->16k for CAMPPlus (kaldi fbank 80) and the prompt tokens",
            "prepare_conditionals": f"model.prepare_conditionals('{wav_path.name}' = wav_24k written as float32 WAV, "
                                    "exaggeration=0.5)",
        }  # fmt: skip
        write_fixture(self.out, "audio_frontends", tensors, notes)

    # ------------------------------------------------------------------------------------------------ S3Gen
    def s3gen(self) -> torch.Tensor:
        model = self.en
        s3, hift = model.s3gen, model.s3gen.mel2wav
        gen = model.conds.gen

        def ref_copy():  # the reference casts the ref dict to float in place: always hand it a copy
            return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in gen.items()}

        tokens = torch.randint(0, SPEECH_VOCAB, (1, S3GEN_N_TOKENS),
                               generator=torch.Generator().manual_seed(S3GEN_TOKEN_SEED), dtype=torch.long)  # fmt: skip
        seen: dict[str, torch.Tensor] = {}
        restore = []

        def wrap_method(obj, name, after):
            original = getattr(obj, name)

            def wrapped(*args, **kwargs):
                result = original(*args, **kwargs)
                after(args, kwargs, result)
                return result

            setattr(obj, name, wrapped)
            restore.append(lambda: delattr(obj, name) if name in vars(obj) else None)

        def estimator_seen(args, kwargs, result):
            if "est_in_x" not in seen:
                seen.update({f"est_in_{k}": kwargs[k].clone() for k in ("x", "mask", "mu", "t", "spks", "cond")})
                seen["est_out"] = result.clone()

        def istft_seen(args, kwargs, result):
            seen.setdefault("istft", result.clone())

        def hift_seen(args, kwargs, result):
            seen["wav_before_trim_fade"], seen["source"] = result[0].clone(), result[1].clone()

        wrap_method(s3.flow.decoder.estimator, "forward", estimator_seen)
        wrap_method(hift, "_istft", istft_seen)
        wrap_method(s3, "hift_inference", hift_seen)
        hooks = [
            s3.flow.encoder.register_forward_hook(lambda m, i, o: seen.__setitem__("encoder_out", o[0].clone())),
            s3.flow.decoder.register_forward_pre_hook(
                lambda m, a, k: seen.update({f"cfm_{n}": k[n].clone() for n in ("mu", "mask", "spks", "cond")}),
                with_kwargs=True),
            hift.f0_predictor.register_forward_hook(lambda m, i, o: seen.__setitem__("f0", o.clone())),
            hift.conv_post.register_forward_hook(lambda m, i, o: seen.__setitem__("conv_post", o.clone())),
        ]  # fmt: skip
        try:
            torch.manual_seed(S3GEN_TORCH_SEED)
            with RandomTap() as tap, torch.inference_mode():
                with self.clock("s3gen_flow_cfm10_50tok"):
                    mel = s3.flow_inference(tokens, ref_dict=ref_copy(), finalize=True)
                flow_draws = len(tap.draws)
                with self.clock("s3gen_hift_50tok"):
                    s3.hift_inference(mel, None)
            # the reference's own end-to-end call with the same seed must give the same waveform
            torch.manual_seed(S3GEN_TORCH_SEED)
            with torch.inference_mode(), self.clock("s3gen_inference_end_to_end_50tok"):
                wav, _ = s3.inference(speech_tokens=tokens, ref_dict=ref_copy())
        finally:
            for hook in hooks:
                hook.remove()
            for undo in restore:
                undo()
        if tap.kinds != ["randn_like", "Uniform.sample", "randn_like", "randn_like"]:
            raise RuntimeError(f"unexpected random draws on the S3Gen path: {tap.kinds}")
        stepwise = seen["wav_before_trim_fade"].clone()
        stepwise[:, : len(s3.trim_fade)] *= s3.trim_fade
        draws = [value for _, value in tap.draws]
        tensors = {
            "speech_tokens": tokens,
            "ref_prompt_token": gen["prompt_token"], "ref_prompt_token_len": gen["prompt_token_len"],
            "ref_prompt_feat": gen["prompt_feat"], "ref_embedding": gen["embedding"],
            "encoder_out": seen["encoder_out"],
            "cfm_mu": seen["cfm_mu"], "cfm_mask": seen["cfm_mask"], "cfm_spks": seen["cfm_spks"],
            "cfm_cond": seen["cfm_cond"], "cfm_noise_z": draws[0],
            **{f"est_step0_in_{k}": seen[f"est_in_{k}"] for k in ("x", "mask", "mu", "t", "spks", "cond")},
            "est_step0_out": seen["est_out"],
            "mel": mel,
            "hift_f0": seen["f0"], "hift_sine_phase": draws[1], "hift_sine_noise": draws[2],
            "hift_unused_noise": draws[3], "hift_source": seen["source"],
            "hift_conv_post_out": seen["conv_post"], "hift_istft_out_before_clamp": seen["istft"],
            "hift_wav_before_trim_fade": seen["wav_before_trim_fade"],
            "wav": wav,
        }  # fmt: skip
        notes = {
            "ref_dict": f"conds.pt 'gen' of the seed-0 random checkpoint (prompt {gen['prompt_token'].shape[1]} tokens, "
                        f"{gen['prompt_feat'].shape[1]} mel frames)",
            "speech_tokens_generator": f"torch.Generator().manual_seed({S3GEN_TOKEN_SEED}); "
                                       f"randint(0,6561,(1,{S3GEN_N_TOKENS}))",
            "torch_manual_seed_before_flow": S3GEN_TORCH_SEED,
            "random_draw_order": ["CFM z = torch.randn_like(mu) (1,80,2*(n_prompt+n_tok))",
                                  "SineGen phase = Uniform(-pi,pi).sample((1,9,1)); phase[:,0]=0 applied after the draw",
                                  "SineGen noise = torch.randn_like(sine_waves) (1,9,L) (then scaled by noise_amp)",
                                  "SourceModuleHnNSF noise = torch.randn_like(uv) (1,L,1) -- drawn but unused in "
                                  "inference"],
            "n_cfm_timesteps": 10, "t_scheduler": "cosine: t = 1 - cos(linspace(0,1,11)*pi/2)",
            "cfm_cfg_rate": 0.7,
            "cfm_formula": "dxdt = (1+0.7)*est(x,mu,spks,cond) - 0.7*est(x,0,0,0); x += (t[i+1]-t[i])*dxdt",
            "mel_frames": mel.shape[-1], "mel_len1_prompt": int(gen["prompt_feat"].shape[1]),
            "end_to_end_vs_stepwise_max_abs_diff": (stepwise - wav).abs().max().item(),
            "n_random_draws_in_flow": flow_draws,
            "hift": "f0 = |classifier(condnet(mel))|; f0 upsampled x480 (nearest); SineGen(9 harmonics, sine_amp 0.1, "
                    "noise_std 0.003, voiced_threshold 10) -> l_linear -> tanh; iSTFT n_fft 16 hop 4; clamp +-0.99; "
                    "then trim_fade (first 960 samples: 480 zeros, 480 raised-cosine fade-in)",
        }  # fmt: skip
        write_fixture(self.out, "s3gen", tensors, notes)
        return mel

    # ------------------------------------------------------------------------------------------ HiFT voiced
    def hift_voiced(self, mel: torch.Tensor) -> None:
        """With random weights HiFT predicts f0 ~ 1 Hz (all unvoiced, threshold 10 Hz); drive the sine source with a
        synthetic voiced contour instead so the voiced path is covered."""
        hift = self.en.s3gen.mel2wav
        f0 = torch.zeros(1, HIFT_VOICED_FRAMES)
        f0[:, 20:] = torch.linspace(120.0, 250.0, HIFT_VOICED_FRAMES - 20)
        f0[:, 60:66] = 0.0
        torch.manual_seed(HIFT_VOICED_SEED)
        with RandomTap() as tap, torch.inference_mode():
            upsampled = hift.f0_upsamp(f0[:, None]).transpose(1, 2)  # (1, L, 1)
            merged, _, uv = hift.m_source(upsampled)
            source = merged.transpose(1, 2)
            wav = hift.decode(x=mel, s=source)
        if tap.kinds != ["Uniform.sample", "randn_like", "randn_like"]:
            raise RuntimeError(f"unexpected random draws on the HiFT source path: {tap.kinds}")
        draws = [value for _, value in tap.draws]
        tensors = {"f0_mel_rate": f0, "mel": mel, "sine_phase": draws[0], "sine_noise": draws[1],
                   "unused_noise": draws[2], "uv": uv, "source": source, "wav_decode": wav}  # fmt: skip
        notes = {"what": "m_source(f0_upsamp(f0)) then decode(mel, source); mel = s3gen.safetensors 'mel'",
                 "f0": "0 Hz for frames 0..19 and 60..65, else linspace(120,250) over frames 20..98 (mel rate, 50 Hz)",
                 "torch_manual_seed": HIFT_VOICED_SEED, "random_draw_order": tap.kinds}  # fmt: skip
        write_fixture(self.out, "hift_voiced", tensors, notes)

    # ------------------------------------------------------------------------------------------- generate()
    def generate(self, variant: str, text: str, lang: str | None, seed: int = 0) -> dict:
        """Full reference generate() under torch.manual_seed(seed); informational (slow: minutes)."""
        model = self.en if variant == "english" else self.mtl
        record: dict = {}
        originals = (model.t3.inference, model.s3gen.inference, model.watermarker.apply_watermark)

        def timed(fn, key, extra=None):
            def wrapped(*args, **kwargs):
                start = time.perf_counter()
                result = fn(*args, **kwargs)
                record[key] = round(time.perf_counter() - start, 3)
                if extra:
                    extra(result, kwargs)
                return result

            return wrapped

        model.t3.inference = timed(originals[0], "t3_s", lambda r, k: record.__setitem__("t3_tokens", r[0].tolist()))
        model.s3gen.inference = timed(
            originals[1], "s3gen_s", lambda r, k: record.__setitem__("s3gen_in_tokens", int(k["speech_tokens"].numel())))
        model.watermarker.apply_watermark = timed(originals[2], "watermark_s")
        torch.manual_seed(seed)
        start = time.perf_counter()
        try:
            wav = model.generate(text) if variant == "english" else model.generate(text, language_id=lang)
            record.update(ok=True, wav_samples=int(wav.shape[-1]), wav_sha256_float32=sha256_of(wav.float()),
                          wav_sum=float(wav.double().sum()), wav_abs_max=float(wav.abs().max()))  # fmt: skip
        except Exception as exc:  # random weights can make the reference itself fail; that is a result too
            record.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:500])
        finally:
            model.t3.inference, model.s3gen.inference, model.watermarker.apply_watermark = originals
        record["total_s"] = round(time.perf_counter() - start, 3)
        generated = record.get("t3_tokens", [])
        record.update(t3_n_tokens=len(generated), t3_n_tokens_ge_6561=sum(t >= SPEECH_VOCAB for t in generated),
                      text=text, language_id=lang, torch_manual_seed=seed)  # fmt: skip
        print(f"[generate {variant}]", {k: v for k, v in record.items() if k != "t3_tokens"}, flush=True)
        return record


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt-en", type=Path, required=True)
    ap.add_argument("--ckpt-mtl", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "golden")
    ap.add_argument("--skip-generate", action="store_true", help="skip the slow full generate() runs (~8 min)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    clock = Clock()
    total = time.perf_counter()

    with clock("load_english_from_local"):
        en = en_tts.ChatterboxTTS.from_local(args.ckpt_en, "cpu")
    with clock("load_multilingual_from_local"):
        mtl = mtl_tts.ChatterboxMultilingualTTS.from_local(args.ckpt_mtl, "cpu")

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    same_s3gen, same_ve = same(en.s3gen, mtl.s3gen), same(en.ve, mtl.ve)

    harness = Harness(en, mtl, args.out, clock)
    with clock("tokenization_all"):
        harness.tokenization()
    harness.t3("english")
    harness.t3("multilingual", repetition_penalty=2.0)

    wav24 = synthetic_clip(24000)
    wav16 = torch.from_numpy(librosa.resample(wav24.numpy(), orig_sr=24000, target_sr=16000)).float()
    wav_path = args.out / "ref_3s_24k.wav"
    sf.write(str(wav_path), wav24.numpy(), 24000, subtype="FLOAT")
    harness.audio_frontends(wav24, wav16, wav_path)
    mel = harness.s3gen()
    with clock("hift_voiced_fixture"):
        harness.hift_voiced(mel)

    generated = {}
    if not args.skip_generate:
        generated["english"] = harness.generate("english", "Hello world.", None)
        generated["multilingual"] = harness.generate("multilingual", "Bonjour le monde.", "fr")
    clock.seconds["make_fixtures_total"] = round(time.perf_counter() - total, 3)

    import diffusers
    import s3tokenizer
    import safetensors
    import tokenizers
    import torchaudio
    import transformers

    env = {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "torchaudio": torchaudio.__version__, "transformers": transformers.__version__,
        "diffusers": diffusers.__version__, "librosa": librosa.__version__, "numpy": np.__version__,
        "safetensors": safetensors.__version__, "tokenizers": tokenizers.__version__,
        "s3tokenizer": getattr(s3tokenizer, "__version__", _version("s3tokenizer")),
        "chatterbox-tts": chatterbox.__version__, "torch_num_threads": torch.get_num_threads(),
    }  # fmt: skip
    summary = {"env": env, "timings_s": clock.seconds, "generate": generated,
               "s3gen_weights_identical_english_vs_multilingual_seed0": same_s3gen,
               "ve_weights_identical_english_vs_multilingual_seed0": same_ve,
               "checkpoints": {"english": str(args.ckpt_en), "multilingual": str(args.ckpt_mtl),
                               "made_by": "chatterbox_vllm.random_checkpoint (seed 0, full size)"}}  # fmt: skip
    with open(args.out / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"fixtures in {args.out}: {size / 1e6:.1f} MB; timings {json.dumps(clock.seconds)}", flush=True)
    if not math.isfinite(size) or size > 20e6:
        raise SystemExit(f"fixtures are {size / 1e6:.1f} MB, over the 20 MB budget")


if __name__ == "__main__":
    main()
