"""The VRAM plan for several models on one GPU (vram_plan.py, app.vram_plan): who fits, with which T3 budgets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from chatterbox_vllm.models.t3.config import T3Config
from chatterbox_vllm.placement import Placement, PlacementError
from chatterbox_vllm.server.model_loader import model_states, vram_plan
from chatterbox_vllm.settings import PRESETS, EngineLimits, Settings
from chatterbox_vllm.vram_plan import (
    CUDA_CONTEXT_GIB, PIPELINE_GIB, S3GEN_PROCESS_GIB, S3GEN_WORK_GIB, VRAMPlanError, check_devices, model_need,
    plan_devices, plan_t3_budgets, t3_kv_bytes_per_token, t3_weight_bytes,
)  # fmt: skip


def limits(preset: str, **changes) -> EngineLimits:
    return dataclasses.replace(Settings(preset=preset).limits(), **changes)


def test_t3_sizes_follow_the_published_architectures() -> None:
    # Llama T3 ~0.5 B parameters, GPT-2 medium ~0.4 B with Turbo's vocabularies, GPT-2 small ~0.17 B (bfloat16)
    assert 0.95 < t3_weight_bytes(T3Config.multilingual()) / 2**30 < 1.0
    assert 0.75 < t3_weight_bytes(T3Config.turbo()) / 2**30 < 0.8
    assert 0.3 < t3_weight_bytes(T3Config.nano()) / 2**30 < 0.35
    # 30 layers x K,V x 16 heads x 64 x 2 bytes, twice for CFG; Turbo has one row, GPT-2 medium is 24 x 1024 wide
    assert t3_kv_bytes_per_token(T3Config.english()) == 240 * 1024
    assert t3_kv_bytes_per_token(T3Config.turbo()) == 96 * 1024


def test_the_low_preset_holds_what_its_models_need() -> None:
    """The smallest preset's T3 budget (measured working on an H100) is at least each model's minimum."""
    low = PRESETS["low"]
    for variant in ("english", "multilingual", "turbo", "nano"):
        assert model_need(variant, variant, "low", low.max_model_len).min_t3_gib <= low.gpu_memory_gib, variant


def test_models_that_fit_keep_their_preset_budget() -> None:
    needs = [model_need(v, v, "medium", 2048) for v in ("multilingual", "turbo")]
    assert plan_t3_budgets(needs, limits("medium"), 24.0, t3_budget_explicit=False) == [5.0, 5.0]


def test_models_that_do_not_fit_share_what_is_left_evenly() -> None:
    needs = [model_need(v, v, "high", 3072) for v in ("multilingual", "turbo")]
    # two at high: 10 + 4.4 + 10 + 5.8 = 30.2 GiB; a 24 GB card's ~22.5 free leave (22.5 - 10.2) / 2 = 6.15 each
    assert plan_t3_budgets(needs, limits("high"), 22.5, t3_budget_explicit=False) == [6.15, 6.15]
    # a 12 GB card at low: 1.75 + 2.9 + 1.75 + 3.3 = 9.7 GiB fit its ~11.5 free as they are
    low = [model_need(v, v, "low", 1536) for v in ("english", "turbo")]
    assert plan_t3_budgets(low, limits("low"), 11.5, t3_budget_explicit=False) == [1.75, 1.75]


def test_models_that_cannot_fit_are_refused_with_the_figures() -> None:
    # an 8 GB card holds one model at low, not two: 7.6 - 2.9 - 3.3 leaves 0.7 GiB each, under either T3's least
    needs = [model_need(v, v, "low", 1536) for v in ("multilingual", "turbo")]
    with pytest.raises(VRAMPlanError) as refused:
        plan_t3_budgets(needs, limits("low"), 7.6, t3_budget_explicit=False)
    message = str(refused.value)
    assert "2 models do not fit the VRAM budget of 7.60 GiB" in message
    assert "multilingual (multilingual): T3 1.75 + pipeline 2.9 GiB (its T3 needs at least 1.73)" in message
    assert "CHATTERBOX_EXTRA_MODELS" in message


def test_an_explicit_t3_budget_is_kept_and_the_message_says_what_would_fit() -> None:
    needs = [model_need(v, v, "high", 3072) for v in ("multilingual", "turbo")]
    with pytest.raises(VRAMPlanError, match=r"CHATTERBOX_GPU_MEMORY_GIB=10 is set: lower it to 6.15 or less"):
        plan_t3_budgets(needs, limits("high"), 22.5, t3_budget_explicit=True)


def test_the_server_plans_only_several_models_on_a_gpu(tmp_path) -> None:
    two = Settings(model="random-tiny", extra_models="random-tiny-turbo", preset="high", device="cuda",
                   vram_budget_gib=22.5, s3gen_layout="thread")  # fmt: skip
    assert vram_plan(two, model_states(two)) == [6.15, 6.15]  # no GPU is touched: the budget is given
    # the high preset's default on a GPU runs S3Gen in a process of its own: each pipeline holds S3GEN_PROCESS_GIB more
    auto = two.model_copy(update={"s3gen_layout": "auto"})
    assert vram_plan(auto, model_states(auto)) == [6.15 - S3GEN_PROCESS_GIB, 6.15 - S3GEN_PROCESS_GIB]
    assert vram_plan(two.model_copy(update={"device": "cpu"}), model_states(two)) == [None, None]
    one = Settings(model="random-tiny", device="cuda", vram_budget_gib=4)
    assert vram_plan(one, model_states(one)) == [None]  # one model: vLLM checks its own budget, as before
    failed = Settings(model="random-tiny", extra_models=[str(tmp_path / "none"), "random-tiny-turbo"],
                      preset="high", device="cuda", vram_budget_gib=22.5, s3gen_layout="thread")  # fmt: skip
    states = model_states(failed)
    assert [s.status for s in states] == ["loading", "error", "loading"]
    assert vram_plan(failed, states) == [6.15, None, 6.15]  # a model that cannot load takes no share
    with pytest.raises(VRAMPlanError):
        vram_plan(two.model_copy(update={"vram_budget_gib": 8.0}), model_states(two))


def test_pipeline_figures_cover_every_backbone_and_preset() -> None:
    assert set(PIPELINE_GIB) == {T3Config.english().backbone, T3Config.turbo().backbone}
    assert all(set(by_preset) == set(PRESETS) for by_preset in PIPELINE_GIB.values())


# ------------------------------------------------------------------------------------------ several GPUs
def test_each_gpu_holds_what_is_placed_on_it() -> None:
    need = model_need("english", "english", "high", 3072)
    worker = S3GEN_PROCESS_GIB + S3GEN_WORK_GIB["llama"]["high"]
    cuda = [torch.device("cuda", i) for i in range(3)]
    devices = plan_devices(Placement(cuda[0], (cuda[0], cuda[1], cuda[1])), [need], [10.0])
    # T3's GPU: the budget, the pipeline (S3Gen's work included) and its worker's context and weights
    assert devices["cuda:0"].parts == [("T3", 10.0), ("pipeline", need.pipeline_gib), ("S3Gen worker", S3GEN_PROCESS_GIB)]
    assert devices["cuda:1"].parts == [("S3Gen worker", worker)] * 2  # each holds its own graphs and activations
    assert devices["cuda:1"].total_gib == pytest.approx(2 * worker)
    # a second worker on T3's GPU holds its work too; T3's data parallelism adds a budget and a context on GPU 1
    devices = plan_devices(Placement(cuda[0], (cuda[0], cuda[0])), [need], [10.0], t3_engines=2)
    assert devices["cuda:0"].parts[-1] == ("S3Gen worker", worker)
    assert devices["cuda:1"].parts == [("T3 engine 1", 10.0 + CUDA_CONTEXT_GIB)]
    # the process layout's need already counts one worker: the pipeline gives it back
    process = model_need("english", "english", "high", 3072, "process")
    devices = plan_devices(Placement(cuda[0], (cuda[1],)), [process], [10.0], layout="process")
    assert devices["cuda:0"].parts == [("T3", 10.0), ("pipeline", need.pipeline_gib)]
    assert devices["cuda:1"].parts == [("S3Gen worker", worker)]
    # CPU workers hold no GPU memory
    assert plan_devices(Placement(torch.device("cpu"), (torch.device("cpu"),) * 2), [need], [10.0]) == {}


def test_a_placement_that_cannot_fit_is_refused_with_the_figures() -> None:
    need = model_need("turbo", "turbo", "high", 3072)
    cuda = [torch.device("cuda", i) for i in range(2)]
    devices = plan_devices(Placement(cuda[0], (cuda[0], cuda[1], cuda[1], cuda[1])), [need], [10.0])
    check_devices(devices, {"cuda:0": 80.0, "cuda:1": 80.0})
    with pytest.raises(VRAMPlanError) as refused:
        check_devices(devices, {"cuda:0": 80.0, "cuda:1": 12.0})
    message = str(refused.value)
    assert "cuda:1 holds S3Gen worker 5.7 + S3Gen worker 5.7 + S3Gen worker 5.7 = 17.1 GiB, 12.00 GiB free" in message
    assert "cuda:0 holds" not in message  # only the GPU that is short
    assert "CHATTERBOX_S3GEN_WORKERS_PER_DEVICE" in message


def test_the_server_checks_the_placement_before_loading(tmp_path) -> None:
    """On this CPU host: a GPU that is not there is refused by name; CPU workers need no plan."""
    states = model_states(Settings(model="random-tiny", voices_dir=str(tmp_path)))
    with pytest.raises(PlacementError, match="CHATTERBOX_S3GEN_DEVICES names cuda:1"):
        vram_plan(Settings(model="random-tiny", device="cpu", s3gen_devices="cpu,cuda:1"), states)
    settings = Settings(model="random-tiny", device="cpu", s3gen_devices="cpu", s3gen_workers_per_device=2)
    assert vram_plan(settings, states) == [None]
