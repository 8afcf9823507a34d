"""Issue 21's acceptance test for model families: a fifth, tiny family defined here, registered, and served through
`ChatterboxTTS` and the HTTP app, with no other module knowing of it; unregistered afterwards."""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from server_utils import make_settings, start_server, stop_server

from chatterbox_vllm import families
from chatterbox_vllm.checkpoint.hub import variant_of
from chatterbox_vllm.checkpoint.weights import CheckpointError
from chatterbox_vllm.engine.base import SamplingParams
from chatterbox_vllm.families import ModelFamily
from chatterbox_vllm.random_checkpoint import write_random_checkpoint
from chatterbox_vllm.tts import ChatterboxTTS

NAME = "tiny-english-2"
DEFAULT_TEMPERATURE = 0.6  # not English's 0.8: the family's own sampling default


def _sampling(**settings: float | int) -> SamplingParams:
    return SamplingParams(**{"temperature": DEFAULT_TEMPERATURE, **settings})  # type: ignore[arg-type]


def _family() -> ModelFamily:
    """English's components under other file names and repo, with a sampling default and a tail of its own."""
    english = families.get("english")
    layout = dataclasses.replace(
        english.layout, variant=NAME, t3="t3_tiny_english_2.safetensors", s3gen="s3gen_2.safetensors",
        repo_id="example/tiny-english-2",
    )  # fmt: skip
    return dataclasses.replace(
        english, name=NAME, display_name="Tiny English 2", layout=layout, hub_aliases=(),
        random_model="random-tiny-english-2",
        sampling_defaults=_sampling, tail_tokens=2,
    )  # fmt: skip


@pytest.fixture
def family() -> Iterator[ModelFamily]:
    registered = families.register(_family())
    try:
        yield registered
    finally:
        families.unregister(NAME)
    assert NAME not in families.names()


def test_a_registered_family_is_served_by_chatterbox_tts_and_the_http_app(family: ModelFamily, tmp_path: Path) -> None:
    directory = write_random_checkpoint(family, "tiny", 0, tmp_path / "ckpt")
    assert (directory / "t3_tiny_english_2.safetensors").is_file() and (directory / "s3gen_2.safetensors").is_file()
    assert not (directory / "t3_cfg.safetensors").exists()
    assert variant_of(str(directory)) == NAME  # told from its files, through the registry

    tts = ChatterboxTTS.from_local(directory, device="cpu", engine="torch")
    try:
        assert tts.family is family and tts.variant == NAME
        assert tts.sampling_params().temperature == DEFAULT_TEMPERATURE
        assert tts.s3gen_tokens([1, 2, 3])[-2:] == [4299, 4299]  # its own tail of silence tokens
        wav = tts.generate("Hello there.", seed=0, max_new_tokens=20)
        assert wav.dtype == np.float32 and wav.size > 0 and np.isfinite(wav).all()
    finally:
        tts.close()

    # The app loads it by its random-model name (written into its cache) and serves it as chatterbox-tiny-english-2.
    settings = make_settings(tmp_path, model=family.random_model, engine="torch", device="cpu",
                             cache_dir=str(tmp_path / "cache"))  # fmt: skip
    running = start_server(settings, tts=None)
    try:
        deadline = time.monotonic() + 180
        while (health := httpx.get(f"{running.url}/health")).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert health.status_code == 200, health.text
        # the web page names the model as its family does
        assert [m["display_name"] for m in health.json()["models"]] == ["Tiny English 2"]
        ids = [m["id"] for m in httpx.get(f"{running.url}/v1/models").json()["data"]]
        assert f"chatterbox-{NAME}" in ids
        response = httpx.post(f"{running.url}/v1/audio/speech", timeout=120, json={
            "model": f"chatterbox-{NAME}", "input": "Hello there.", "voice": "alloy", "response_format": "wav",
        })  # fmt: skip
        assert response.status_code == 200, response.text
        assert response.headers["x-chatterbox-model"] == f"chatterbox-{NAME}"
        audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
        assert rate == 24000 and audio.size > 0
        languages = httpx.get(f"{running.url}/v1/audio/languages").json()["languages"]
        assert languages == [{"code": "en", "name": "English"}]
    finally:
        stop_server(running)


def test_an_unregistered_family_is_unknown(tmp_path: Path) -> None:
    assert NAME not in families.names()
    with pytest.raises(CheckpointError):
        variant_of("random-tiny-english-2")


def test_a_family_may_not_take_another_ones_names_or_files() -> None:
    english = families.get("english")
    with pytest.raises(ValueError, match="already registered"):
        families.register(english)
    with pytest.raises(ValueError, match="T3 file"):
        families.register(dataclasses.replace(english, name="copy", hub_aliases=(), random_model=None))
    with pytest.raises(ValueError, match="model names"):
        families.register(dataclasses.replace(_family(), hub_aliases=("en",)))
    assert NAME not in families.names()
