"""Start-up caches and sizes: every compile cache in the cache directory (which the settings name, .env included),
a variable the user set kept, T3's CUDA-graph batch sizes bounded by its batch, the load's phases recorded."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from chatterbox_vllm import process_setup
from chatterbox_vllm.checkpoint.config import load_model_config
from chatterbox_vllm.checkpoint.hub import random_checkpoint_dir
from chatterbox_vllm.checkpoint.layout import ENGLISH
from chatterbox_vllm.compile_cache import (
    CACHE_DIR_ENV,
    CACHE_DIRECTORIES,
    CACHE_SWITCHES,
    cache_root,
    compile_cache_environment,
    use_cache_dir,
)
from chatterbox_vllm.engine.vllm_engine import VLLMOptions, cudagraph_capture_sizes, engine_kwargs
from chatterbox_vllm.engine.vllm_t3.model_dir import prepare_model_dir
from chatterbox_vllm.loading import LoadOptions
from chatterbox_vllm.process_setup import FLASHINFER_SAMPLER_ENV, ProcessSettings, configure_process, configured
from chatterbox_vllm.settings import Settings
from chatterbox_vllm.tts import ChatterboxTTS


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No cache variable from outside; the environment, the TF32 switches and what configure_process applied as
    they were after each test (use_cache_dir and configure_process set them)."""
    saved = dict(os.environ)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    switch_interval = sys.getswitchinterval()
    monkeypatch.setattr(process_setup, "_applied", None)
    for name in [*CACHE_DIRECTORIES, *CACHE_SWITCHES, CACHE_DIR_ENV, "VLLM_USE_FLASHINFER_SAMPLER"]:
        os.environ.pop(name, None)
    for name in list(os.environ):
        if name.upper().startswith("CHATTERBOX_"):
            del os.environ[name]
    monkeypatch.chdir(tmp_path)  # the .env lookup sees only what a test writes here
    yield
    os.environ.clear()
    os.environ.update(saved)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    sys.setswitchinterval(switch_interval)


def test_every_compile_cache_goes_under_the_cache_directory(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    effective = use_cache_dir(cache)
    for name in CACHE_DIRECTORIES:
        assert Path(os.environ[name]).parent == cache / "compile", name
        assert effective[name] == os.environ[name]
    assert len({os.environ[name] for name in CACHE_DIRECTORIES}) == len(CACHE_DIRECTORIES)  # one each
    assert {"VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"} <= set(CACHE_DIRECTORIES)
    assert os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] == os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] == "1"


def test_a_variable_the_user_set_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "mine"))
    effective = use_cache_dir(tmp_path / "cache")
    assert os.environ["VLLM_CACHE_ROOT"] == effective["VLLM_CACHE_ROOT"] == str(tmp_path / "mine")
    assert os.environ["TRITON_CACHE_DIR"] == compile_cache_environment(tmp_path / "cache")["TRITON_CACHE_DIR"]


def test_inductor_switches_reach_a_config_imported_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM imports torch's configs (which read the switches once) before the server sets them."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fx_graph_cache", True)
    monkeypatch.setattr(functorch_config, "enable_autograd_cache", False)
    monkeypatch.setenv("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")  # the user's choice
    use_cache_dir(tmp_path / "cache")
    assert inductor_config.fx_graph_cache is False and functorch_config.enable_autograd_cache is True


def test_a_cache_dir_from_dotenv_reaches_checkpoints_and_t3_model_dirs(tmp_path: Path, english_tiny_checkpoint: Path) -> None:
    """The cache directory named in .env (which only Settings reads) is the one every part of the server uses, also
    where no directory is passed down (a library load, a benchmark): those ask Settings too."""
    (tmp_path / ".env").write_text(f"CHATTERBOX_CACHE_DIR={tmp_path / 'from-dotenv'}\n")
    settings = Settings()
    assert settings.resolved_cache_dir() == tmp_path / "from-dotenv"
    use_cache_dir(settings.resolved_cache_dir())
    assert CACHE_DIR_ENV not in os.environ  # the process's environment keeps what the user set, nothing more
    assert random_checkpoint_dir("english").parent == tmp_path / "from-dotenv" / "random"
    assert cache_root() == tmp_path / "from-dotenv"
    t3 = load_model_config(english_tiny_checkpoint, ENGLISH).t3
    assert prepare_model_dir(english_tiny_checkpoint / ENGLISH.t3, t3).parent == tmp_path / "from-dotenv" / "vllm-t3"
    assert cache_root(tmp_path / "passed") == tmp_path / "passed"  # what the server passes down wins
    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "from-dotenv" / "compile" / "vllm")


def test_default_cache_dir_is_the_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Settings().resolved_cache_dir() == tmp_path / "xdg" / "chatterbox-vllm"
    assert Settings(cache_dir="~/c").resolved_cache_dir() == Path.home() / "c"


@pytest.mark.parametrize("max_num_seqs", [1, 2, 3, 8, 12, 32, 64, 100])
def test_graph_sizes_cover_every_batch_up_to_max_num_seqs(max_num_seqs: int) -> None:
    sizes = cudagraph_capture_sizes(max_num_seqs)
    assert list(sizes) == sorted(set(sizes)) and sizes[0] == 1 and sizes[-1] == max_num_seqs
    # every batch pads to a size under twice its own, at most 1.5x above 8 rows: little wasted decode work
    for batch in range(1, max_num_seqs + 1):
        padded = min(s for s in sizes if s >= batch)
        assert padded < 2 * batch and (batch <= 8 or padded <= 1.5 * batch), (batch, padded)
    # fewer graphs than vLLM's default list (1, 2, 4, then steps of 8 up to twice max_num_seqs)
    default = [s for s in [1, 2, 4, *range(8, 513, 8)] if s <= 2 * max_num_seqs]
    assert len(sizes) <= len(default)


def test_vllm_takes_the_graph_sizes_and_eager_or_cpu_gets_none() -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs

    sizes = cudagraph_capture_sizes(32)
    args = AsyncEngineArgs(**engine_kwargs(Path("/nonexistent"), VLLMOptions(max_num_seqs=32, cudagraph_capture_sizes=sizes)))
    assert list(args.compilation_config.cudagraph_capture_sizes) == list(sizes)
    eager = engine_kwargs(Path("/x"), VLLMOptions(max_num_seqs=32, enforce_eager=True, cudagraph_capture_sizes=sizes))
    assert "compilation_config" not in eager
    limits = Settings(preset="high").limits()
    assert VLLMOptions.from_limits(limits, torch.device("cpu")).cudagraph_capture_sizes is None


def test_t3_data_parallel_size_reaches_vllms_parallel_config() -> None:
    """CHATTERBOX_T3_DATA_PARALLEL_SIZE becomes vLLM's data parallelism (engines on GPUs 0..N-1); 1 passes nothing,
    so one engine's arguments stay those every pinned vLLM version takes."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    one = LoadOptions.from_settings(Settings(device="cpu")).vllm
    assert one is not None and one.data_parallel_size == 1 and "data_parallel_size" not in engine_kwargs(Path("/x"), one)
    two = LoadOptions.from_settings(Settings(device="cpu", t3_data_parallel_size=2)).vllm
    assert two is not None and two.data_parallel_size == 2
    assert AsyncEngineArgs(**engine_kwargs(Path("/x"), two)).data_parallel_size == 2


@pytest.mark.parametrize("value", ["false", None])
def test_t3_compile_reaches_the_model_config_of_vllms_engine(
    tmp_path: Path, english_tiny_checkpoint: Path, value: str | None
) -> None:
    """CHATTERBOX_T3_COMPILE, read by Settings, rides to vLLM's engine process (where the model class decides
    whether to compile) in the model config vLLM builds from the engine arguments."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from chatterbox_vllm.engine.vllm_t3 import plugin

    if value is not None:
        os.environ["CHATTERBOX_T3_COMPILE"] = value
    settings = Settings()
    options = VLLMOptions.from_limits(settings.limits(), torch.device("cpu"), compile=settings.t3_compile)
    t3 = load_model_config(english_tiny_checkpoint, ENGLISH).t3
    directory = prepare_model_dir(english_tiny_checkpoint / ENGLISH.t3, t3, tmp_path)
    plugin.register()
    hf_config = AsyncEngineArgs(**engine_kwargs(directory, options, t3)).create_model_config().hf_config
    assert getattr(hf_config, plugin.T3_COMPILE) is (value is None)


def test_load_records_its_phases_and_the_warm_up_bound(tmp_path: Path) -> None:
    """ChatterboxTTS.from_settings (the server's load) on the PyTorch engine after configure_process (the server's
    start): the cache directory is applied, the FlashInfer sampler is off unless asked for, the phases are recorded
    (S3Gen's graphs are GPU-only) and the S3Gen worker process would be set up as this one."""
    settings = Settings(model="random-tiny", engine="torch", device="cpu", cache_dir=str(tmp_path / "cache"),
                        s3gen_warm_up_tokens=120)  # fmt: skip
    applied = configure_process(settings)
    tts = ChatterboxTTS.from_settings(settings)
    try:
        assert tts.s3gen_warm_up_tokens == 120
        assert list(tts.startup_phases) == ["load_s3gen_voice_encoder", "t3_engine"]
        assert all(seconds > 0 for seconds in tts.startup_phases.values())
        assert tts.warm_up_s3gen(1000) == 0 and "s3gen_graphs" not in tts.startup_phases  # no graphs on a CPU
        # the random checkpoint went to the settings' cache directory (given to the constructor: no variable says it)
        assert (random_checkpoint_dir("english", settings.resolved_cache_dir()) / "t3_cfg.safetensors").is_file()
        assert not random_checkpoint_dir("english").is_relative_to(tmp_path)
        assert os.environ["VLLM_USE_FLASHINFER_SAMPLER"] == "0"
        assert tts.vocoder_spec is not None and tts.vocoder_spec.process == applied
        assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "compile" / "triton")
    finally:
        tts.close()


def test_from_settings_changes_no_process_state(tmp_path: Path) -> None:
    """Loading leaves the environment and the TF32 switches as they were: process-wide settings are
    configure_process's, called once where a process starts; a child of this process would apply none."""
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    environment = dict(os.environ)
    settings = Settings(model="random-tiny", engine="torch", device="cpu", cache_dir=str(tmp_path / "cache"))
    tts = ChatterboxTTS.from_settings(settings)
    try:
        assert dict(os.environ) == environment
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, True)
        assert tts.vocoder_spec is not None and tts.vocoder_spec.process is None and configured() is None
    finally:
        tts.close()


def test_building_an_app_changes_no_process_state(tmp_path: Path) -> None:
    """An app built only for its OpenAPI schema (the hostile-input tests do it at collection) sets no compile-cache
    variable: the process is configured when the app starts (or by `serve` before it), never by `create_app`."""
    from chatterbox_vllm.server.app import create_app

    environment = dict(os.environ)
    assert "paths" in create_app(Settings(device="cpu", cache_dir=str(tmp_path / "cache"))).openapi()
    assert dict(os.environ) == environment and configured() is None


def test_configure_process_applies_the_settings_once_and_keeps_what_the_user_set(tmp_path: Path) -> None:
    """The compile caches, vLLM's FlashInfer sampler variable, TF32 (where the settings name a GPU) and the GIL
    switch interval; a second call changes nothing; a variable the user set wins."""
    os.environ[FLASHINFER_SAMPLER_ENV] = "1"
    os.environ["TRITON_CACHE_DIR"] = str(tmp_path / "mine")
    settings = Settings(device="cpu", cache_dir=str(tmp_path / "cache"), gil_switch_interval_ms=0.7)
    applied = configure_process(settings)
    assert applied == ProcessSettings(tmp_path / "cache", flashinfer_sampler=False, tf32=None,
                                      gil_switch_interval_ms=0.7)  # no GPU: TF32 left  # fmt: skip
    # S3Gen's thread launches its kernels between the event loop's turns with the GIL (BENCHMARKS.md)
    assert sys.getswitchinterval() == pytest.approx(0.0007)
    assert configured() == applied
    assert os.environ[FLASHINFER_SAMPLER_ENV] == "1" and os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "mine")
    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "cache" / "compile" / "vllm")
    environment = dict(os.environ)
    assert configure_process(settings) == applied and dict(os.environ) == environment
    # TF32 as a GPU process's settings say (the S3Gen worker receives them in its VocoderSpec)
    for tf32 in (False, True):
        configure_process(ProcessSettings(tmp_path / "cache", flashinfer_sampler=False, tf32=tf32))
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    os.environ.pop(FLASHINFER_SAMPLER_ENV)
    configure_process(settings)
    assert os.environ[FLASHINFER_SAMPLER_ENV] == "0"  # vLLM's own sampling kernels unless the settings ask for it
    assert configure_process(None) is None and configured() == applied  # a child of an unconfigured process


@pytest.mark.skipif(not torch.cuda.is_available(), reason="S3Gen's CUDA graphs: runs on the GPU machine")
def test_gpu_warm_up_captures_up_to_the_bound_and_a_longer_piece_after_first_use(tmp_path: Path) -> None:
    settings = Settings(model="random-tiny", engine="torch", device="cuda", cache_dir=str(tmp_path / "cache"),
                        s3gen_warm_up_tokens=10)  # fmt: skip
    configure_process(settings)
    tts = ChatterboxTTS.from_settings(settings)
    try:
        graphs = tts.s3gen.flow.decoder.graphs
        assert graphs is not None
        captured = tts.warm_up_s3gen(1000)
        # one-row buckets of 64 frames up to the longest prompt (250 tokens) + 10 speech tokens, 2 frames each
        assert captured == graphs.captured == -(-2 * (250 + 10) // graphs.bucket_frames)
        assert tts.startup_phases["s3gen_compile"] > 0 and tts.startup_phases["s3gen_graphs"] > 0
        assert tts.default_conds is not None
        prompt = tts.default_conds.gen["prompt_token"].shape[-1]
        tts.vocode([1] * (graphs.bucket_frames * captured // 2 + 40 - prompt), tts.default_conds, seed=0)
        # the longer piece ran eagerly (no captured graph covers it) and its shape is captured in the background
        assert graphs.stats()["eager"] == 1
        assert graphs.wait_idle(timeout=120)
        assert graphs.captured == captured + 1 and graphs.stats()["captured_background"] == 1
    finally:
        tts.close()
