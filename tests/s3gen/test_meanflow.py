"""The mean-flow S3Gen of Turbo and Nano (`s3gen_meanflow.safetensors`) against chatterbox-tts 0.1.7.

Golden: `tests/fixtures/golden/meanflow/`, made by `tools/reference/make_meanflow_fixtures.py` on the full-size
reference `S3Gen(meanflow=True)` whose `flow.*` and `mel2wav.*` tensors follow our checkpoints' value rule with seed
0 (`random_checkpoint.random_tensor`); the test regenerates the same weights instead of storing 1 GB.
Float tensors go through the shared parity metric (tests/parity.py), with the stages of test_s3gen_golden; a
mutation test shows the estimator check fails on one perturbed tensor of the mean-flow time mixer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from flow_utils import golden_ref
from parity import assert_caught, check, perturbed
from safetensors.torch import load_file

from chatterbox_vllm.models.s3gen import S3Gen, S3GenConfig, build_s3gen
from chatterbox_vllm.models.s3gen.cfm_graphs import bucket_length, padded_solve
from chatterbox_vllm.models.s3gen.flow import FlowRow
from chatterbox_vllm.models.s3gen.flow_matching import draw_initial_noise, estimator_rows, time_grid
from chatterbox_vllm.random_checkpoint import TensorSpec, random_tensor

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "meanflow"
WEIGHT_PREFIXES = ("flow.", "mel2wav.")


def seeded(model: S3Gen, seed: int = 0) -> S3Gen:
    """`flow.*` and `mel2wav.*` by the random checkpoints' value rule (all that inference from a ref dict uses)."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith(WEIGHT_PREFIXES):
                tensor.copy_(random_tensor(seed, TensorSpec(name, tuple(tensor.shape), tensor.dtype)))
    return model.eval()


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    path = GOLDEN / "meanflow.safetensors"
    if not path.is_file():
        pytest.skip("no mean-flow golden fixture")
    return load_file(str(path))


@pytest.fixture(scope="module")
def notes() -> dict:
    return json.loads((GOLDEN / "meanflow.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def s3gen() -> S3Gen:
    return seeded(build_s3gen(S3GenConfig.meanflow_model()))


# ------------------------------------------------------------------------------------------------ config, layout
def test_state_dict_matches_the_reference_manifest() -> None:
    """Names, shapes, dtypes and order of the reference's `S3Gen(meanflow=True).state_dict()`, which
    `ChatterboxTurboTTS.from_local` loads strictly (so the published file holds every one)."""
    manifest = json.loads((GOLDEN / "s3gen_meanflow.safetensors.json").read_text(encoding="utf-8"))
    with torch.device("meta"):
        model = S3Gen(S3GenConfig.meanflow_model())
    ours = [
        {"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in model.state_dict().items()
    ]
    assert ours == manifest
    assert "flow.decoder.estimator.time_embed_mixer.weight" in {e["name"] for e in manifest}


def test_the_original_model_has_no_time_mixer() -> None:
    with torch.device("meta"):
        names = S3Gen(S3GenConfig()).state_dict().keys()
    assert not any("time_embed_mixer" in n for n in names)


@pytest.mark.parametrize(
    "config",
    [S3GenConfig(), S3GenConfig.meanflow_model(), S3GenConfig.tiny(), S3GenConfig.tiny(meanflow=True)],
    ids=["original", "meanflow", "tiny", "tiny-meanflow"],
)
def test_config_round_trips_through_json(config: S3GenConfig) -> None:
    """As `random_checkpoint` writes it to chatterbox_config.json (`dataclasses.asdict`) and the loader reads it."""
    record = json.loads(json.dumps(dataclasses.asdict(config)))
    assert S3GenConfig.from_dict(record) == config


def test_meanflow_factories() -> None:
    full, tiny = S3GenConfig.meanflow_model(), S3GenConfig.tiny(meanflow=True)
    assert full.meanflow and full.flow.n_timesteps == 2 and tiny.meanflow and tiny.flow.n_timesteps == 2
    assert dataclasses.replace(full, meanflow=False, flow=S3GenConfig().flow) == S3GenConfig()
    assert not S3GenConfig().meanflow and not S3GenConfig.tiny().meanflow
    # configs written before the field existed read as the original model
    old = dataclasses.asdict(S3GenConfig.tiny())
    del old["meanflow"]
    assert S3GenConfig.from_dict(old) == S3GenConfig.tiny()


# ------------------------------------------------------------------------------------------------ solver pieces
def test_noise_is_drawn_in_the_reference_order(golden, notes) -> None:
    """`torch.manual_seed(s)` + reference == `Generator().manual_seed(s)` here: first the generated frames
    `[1, 80, 2T]`, then `randn_like(mu)` whose last 2T frames that first draw replaces."""
    frames, tokens = golden["cfm_noise_z"].size(-1), golden["speech_tokens"].size(-1)
    seed = notes["torch_manual_seed"]
    z = draw_initial_noise((1, 80, frames), meanflow=True, generated_frames=2 * tokens,
                           generator=torch.Generator().manual_seed(seed))  # fmt: skip
    assert torch.equal(z, golden["cfm_noise_z"])
    g = torch.Generator().manual_seed(seed)
    first, second = torch.randn(1, 80, 2 * tokens, generator=g), torch.randn(1, 80, frames, generator=g)
    assert torch.equal(z[..., -2 * tokens :], first)
    assert torch.equal(z[..., : frames - 2 * tokens], second[..., : frames - 2 * tokens])
    # the original S3Gen: one randn of mu's shape
    plain = draw_initial_noise((1, 80, frames), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(plain, torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(seed)))


def test_linear_time_grid_and_row_layout() -> None:
    """Mean flow: t = 0, 1/2, 1 and the estimator sees the B rows (t and r `[1]`); CFG: 2B rows, t `[2B]`."""
    assert time_grid(2, "linear", device=torch.device("cpu"), dtype=torch.float32).tolist() == [0.0, 0.5, 1.0]
    b, frames = 3, 7
    x, mu, cond = (torch.randn(b, 80, frames) for _ in range(3))
    mask, spks, t, r = torch.ones(b, 1, frames), torch.randn(b, 80), torch.zeros(1), torch.full((1,), 0.5)
    rows = estimator_rows(x, mask, mu, t, spks, cond, r=r, guided=False)
    assert rows["x"] is x and rows["mu"] is mu and rows["t"] is t and rows["r"] is r
    assert {k: tuple(v.shape) for k, v in rows.items()}["x"] == (b, 80, frames)
    cfg = estimator_rows(x, mask, mu, t, spks, cond)
    assert cfg["x"].size(0) == 2 * b and cfg["t"].shape == (2 * b,) and "r" not in cfg
    assert torch.equal(cfg["mu"][b:], torch.zeros_like(mu)) and torch.equal(cfg["mu"][:b], mu)
    with pytest.raises(ValueError):
        estimator_rows(x, mask, mu, t, spks, cond, guided=False)


def test_estimator_steps(s3gen, golden) -> None:
    """Both captured estimator calls (t, r) = (0, 0.5) and (0.5, 1), inputs as the reference gave them."""
    est = s3gen.flow.decoder.estimator
    common = {k: golden[f"est_step0_in_{k}"] for k in ("mask", "mu", "spks", "cond")}
    with torch.inference_mode():
        for k in range(2):
            out = est(x=golden[f"est_step{k}_in_x"], t=golden[f"est_step{k}_in_t"], r=golden[f"est_step{k}_in_r"],
                      **common)  # fmt: skip
            check("s3gen.estimator", out, golden[f"est_step{k}_out"], case=f"meanflow step {k}")
    assert golden["est_step0_in_t"].tolist() == [0.0] and golden["est_step1_in_r"].tolist() == [1.0]


def test_estimator_check_catches_a_perturbed_time_mixer(s3gen, golden) -> None:
    est = s3gen.flow.decoder.estimator
    inputs = {k: golden[f"est_step0_in_{k}"] for k in ("x", "mask", "mu", "spks", "cond", "t", "r")}
    with perturbed(est, "time_embed_mixer.weight"), torch.inference_mode():
        out = est(**inputs)
    assert_caught("s3gen.estimator", out, golden["est_step0_out"], mutant="meanflow: time_embed_mixer x (1+1e-3)")


# ------------------------------------------------------------------------------------------------ end to end
def test_flow_inputs_and_mel_with_captured_noise(s3gen, golden) -> None:
    ref = golden_ref(golden)
    tokens = golden["speech_tokens"]
    with torch.inference_mode():
        inputs = s3gen.flow.prepare(tokens, torch.tensor([tokens.size(1)]), ref["prompt_token"],
                                    ref["prompt_token_len"], ref["prompt_feat"], ref["embedding"])  # fmt: skip
    check("s3gen.encoder", inputs.mu, golden["est_step0_in_mu"], case="meanflow")
    check("s3gen.spks", inputs.spks, golden["est_step0_in_spks"], case="meanflow")
    assert torch.equal(inputs.mask, golden["est_step0_in_mask"])
    assert torch.equal(inputs.cond, golden["est_step0_in_cond"])  # the prompt mel, copied
    mel = s3gen.flow_inference(tokens, ref, noise=golden["cfm_noise_z"])
    assert mel.shape == golden["mel"].shape == (1, 80, 2 * tokens.size(1) - 1)  # prompt mel = 2 x tokens + 1
    check("s3gen.mel_meanflow", mel, golden["mel"], case="meanflow")


def test_mel_seeded(s3gen, golden, notes) -> None:
    mel = s3gen.flow_inference(
        golden["speech_tokens"], golden_ref(golden), generator=torch.Generator().manual_seed(notes["torch_manual_seed"])
    )
    check("s3gen.mel_meanflow", mel, golden["mel"], case="meanflow seeded")


def test_waveform_end_to_end_seeded(s3gen, golden, notes) -> None:
    """`Generator().manual_seed(s)` reproduces `torch.manual_seed(s); s3gen.inference(..., n_cfm_timesteps=2)`:
    the flow's two draws, then HiFT's, all in the reference's order."""
    wav = s3gen.inference(
        golden["speech_tokens"], golden_ref(golden), generator=torch.Generator().manual_seed(notes["torch_manual_seed"])
    )
    assert wav.shape == golden["wav"].shape
    check("hift.wav", wav, golden["wav"], case="meanflow")
    assert torch.all(wav[:, :480] == 0)


# ------------------------------------------------------------------------------------------------ service paths
def _row(s3gen: S3Gen, golden, prompt_tokens: int, tokens: int, seed: int) -> tuple[FlowRow, int]:
    """A request with a prefix of the golden prompt, its own x-vector and tokens, and noise from its seed drawn as
    `vocode_batch` draws it (`flow.draw_noise`)."""
    g = torch.Generator().manual_seed(100 + seed)
    embedding = golden["ref_embedding"].reshape(-1) + 0.1 * torch.randn(192, generator=g)
    feat = golden["ref_prompt_feat"].reshape(-1, 80)[: 2 * prompt_tokens + 1]
    speech = torch.randint(0, 6561, (tokens,), generator=g)
    noise = s3gen.flow.draw_noise(2 * (prompt_tokens + tokens), tokens, torch.Generator().manual_seed(seed))
    prompt = golden["ref_prompt_token"].reshape(-1)[:prompt_tokens]
    return FlowRow(speech, prompt, feat, embedding, noise), seed


def _alone(s3gen: S3Gen, row: FlowRow, seed: int) -> torch.Tensor:
    """The request vocoded alone, its noise drawn by the flow from its seed (`vocode`'s path)."""
    return s3gen.flow.inference(
        row.tokens[None], torch.tensor([row.tokens.numel()]), row.prompt_token[None],
        torch.tensor([row.prompt_token.numel()]), row.prompt_feat[None], None, row.embedding[None],
        generator=torch.Generator().manual_seed(seed),
    )[0]  # fmt: skip


def test_batched_rows_match_each_row_alone(s3gen, golden) -> None:
    made = [_row(s3gen, golden, 40, 23, 1), _row(s3gen, golden, 25, 9, 2), _row(s3gen, golden, 33, 30, 3)]
    with torch.inference_mode():
        batched = s3gen.flow.inference_rows([row for row, _ in made])
        singles = [_alone(s3gen, row, seed) for row, seed in made]
    for (row, _), got, want in zip(made, batched, singles, strict=True):
        assert got.shape == want.shape == (80, 2 * row.tokens.numel() - 1)
        torch.testing.assert_close(got, want, atol=3e-5, rtol=1e-4)
    assert not torch.allclose(batched[0][:, :16], batched[1][:, :16])


def _solve_inputs(golden, rows: int, frames: int | None = None) -> tuple[torch.Tensor, ...]:
    """`solve`'s inputs: the golden step-0 ones (first `frames` frames) for `rows` rows made to differ."""
    g = torch.Generator().manual_seed(rows)
    first = {k: golden[k][..., :frames] for k in ("cfm_noise_z", "est_step0_in_mu", "est_step0_in_mask",
                                                   "est_step0_in_cond")}  # fmt: skip
    shape = (rows, *first["est_step0_in_mu"].shape[1:])
    noise = first["cfm_noise_z"].expand(shape) + 0.1 * torch.randn(shape, generator=g)
    mu = first["est_step0_in_mu"].expand(shape) + 0.2 * torch.randn(shape, generator=g)
    return (noise, first["est_step0_in_mask"].expand(rows, -1, -1), mu,
            golden["est_step0_in_spks"].expand(rows, -1), first["est_step0_in_cond"].expand(shape))  # fmt: skip


@pytest.mark.parametrize("rows", [1, 3])
def test_cuda_graph_padding_leaves_rows_unchanged(s3gen, golden, rows: int) -> None:
    """What the CUDA graphs replay (`padded_solve`): B request rows (no CFG doubling) padded with filler rows to a
    power of two and frames to the bucket, 2 steps."""
    cfm = s3gen.flow.decoder
    noise, mask, mu, spks, cond = _solve_inputs(golden, rows)
    filler_rows = 4 if rows > 1 else None
    with torch.inference_mode():
        plain = cfm.solve(noise, mask, mu, spks, cond, 2)
        padded = padded_solve(cfm.solve, noise, mask, mu, spks, cond, 2, bucket_frames=64 * rows, rows=filler_rows)
    assert bucket_length(noise.size(-1), 64) > noise.size(-1)
    torch.testing.assert_close(padded, plain, atol=2e-5, rtol=1e-5)
    if rows > 1:
        assert not torch.allclose(plain[0], plain[1])


def test_float16_stays_near_and_overflow_falls_back(s3gen, golden) -> None:
    """float16 autocast (the server's default on GPUs) lands near float32; an overflow answers the float32 result."""
    cfm = s3gen.flow.decoder
    noise, mask, mu, spks, cond = _solve_inputs(golden, 1, frames=48)
    with torch.inference_mode():
        full = cfm.solve(noise, mask, mu, spks, cond, 2)
        loud = mu * 1e5
        expected = cfm.solve(noise, mask, loud, spks, cond, 2)
        cfm.compute_dtype = torch.float16
        try:
            half = cfm.solve(noise, mask, mu, spks, cond, 2)
            out = cfm(loud, mask, spks, cond, n_timesteps=2, noise=noise)
            fell_back = cfm.compute_dtype is None
        finally:
            cfm.compute_dtype = None
    assert half.dtype == torch.float32 and 0 < float((half - full).abs().max())
    assert float((half - full).abs().mean()) < 0.05 * float(full.abs().mean())
    assert fell_back and torch.equal(out, expected)


def test_tiny_meanflow_model_compiles_and_vocodes() -> None:
    """The tiny mean-flow S3Gen (test checkpoints): 2 steps end to end, and compiled blocks compute the same."""
    model = seeded(build_s3gen(S3GenConfig.tiny(meanflow=True)))
    cfm = model.flow.decoder
    assert cfm.meanflow and cfm.estimator.time_embed_mixer.weight.shape == (128, 256)
    g = torch.Generator().manual_seed(5)
    ref = {"prompt_token": torch.randint(0, 6561, (1, 12), generator=g), "prompt_token_len": torch.tensor([12]),
           "prompt_feat": torch.randn(1, 24, 80, generator=g) - 5, "prompt_feat_len": None,
           "embedding": torch.randn(1, 192, generator=g)}  # fmt: skip
    tokens = torch.randint(0, 6561, (1, 10), generator=g)
    wav = model.inference(tokens, ref, generator=torch.Generator().manual_seed(0))
    assert wav.shape == (1, 20 * 480) and wav.isfinite().all()
    inputs = model.flow.prepare(tokens, torch.tensor([10]), ref["prompt_token"], ref["prompt_token_len"],
                                ref["prompt_feat"], ref["embedding"])  # fmt: skip
    noise = model.flow.draw_noise(44, 10, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        eager = cfm.solve(noise, inputs.mask, inputs.mu, inputs.spks, inputs.cond, 2)
        cfm.compile_blocks()
        try:
            compiled = cfm.solve(noise, inputs.mask, inputs.mu, inputs.spks, inputs.cond, 2)
        finally:
            cfm.uncompile_blocks()
    torch.testing.assert_close(compiled, eager, atol=2e-5, rtol=1e-5)
