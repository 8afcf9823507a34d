"""Placement settings (CHATTERBOX_T3_DEVICE, CHATTERBOX_S3GEN_DEVICES, CHATTERBOX_S3GEN_WORKERS_PER_DEVICE): their
validation, and the placement they resolve to on hosts of 0, 1, 2 and 4 visible GPUs."""

from __future__ import annotations

import pydantic
import pytest
import torch

from chatterbox_vllm.placement import Placement, PlacementError, resolve_placement
from chatterbox_vllm.settings import Settings

CPU, CUDA = torch.device("cpu"), [torch.device("cuda", i) for i in range(4)]


def test_unset_is_one_worker_beside_t3() -> None:
    settings = Settings()
    assert settings.s3gen_devices is None and settings.s3gen_workers_per_device == 1 and settings.t3_device == "auto"
    assert resolve_placement(settings, gpus=0) == Placement(CPU, (CPU,))
    assert resolve_placement(settings, gpus=2) == Placement(CUDA[0], (CUDA[0],))
    assert not resolve_placement(settings, gpus=2).s3gen_in_processes("thread")  # today's thread layout
    assert resolve_placement(settings, gpus=2).s3gen_in_processes("process")


def test_auto_places_a_worker_on_every_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATTERBOX_S3GEN_DEVICES", "auto")
    placement = resolve_placement(Settings(), gpus=4)
    assert placement.t3_device == CUDA[0] and placement.s3gen_devices == tuple(CUDA)
    assert placement.s3gen_in_processes("thread") and placement.gpus() == CUDA
    assert placement.describe() == "T3 on cuda:0; S3Gen workers on cuda:0, cuda:1, cuda:2, cuda:3"
    assert resolve_placement(Settings(), gpus=0) == Placement(CPU, (CPU,))  # a CPU host: one worker on the CPU
    monkeypatch.setenv("CHATTERBOX_S3GEN_WORKERS_PER_DEVICE", "2")
    assert resolve_placement(Settings(), gpus=2).s3gen_devices == (CUDA[0], CUDA[0], CUDA[1], CUDA[1])


def test_listed_devices_and_t3_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATTERBOX_S3GEN_DEVICES", " cuda:1 , CUDA:2")
    monkeypatch.setenv("CHATTERBOX_T3_DEVICE", "cuda")
    settings = Settings()
    assert settings.s3gen_devices == "cuda:1,cuda:2" and settings.t3_device == "cuda:0"
    placement = resolve_placement(settings, gpus=4)
    assert placement == Placement(CUDA[0], (CUDA[1], CUDA[2]))
    assert placement.gpus() == CUDA[:3]
    # one worker off T3's device needs its own process, whatever the layout says
    monkeypatch.setenv("CHATTERBOX_S3GEN_DEVICES", "cuda:1")
    assert resolve_placement(Settings(), gpus=2).s3gen_in_processes("thread")
    monkeypatch.setenv("CHATTERBOX_S3GEN_DEVICES", "cpu,cuda")
    assert resolve_placement(Settings(), gpus=1).s3gen_devices == (CPU, CUDA[0])
    # T3's device: its own setting, else CHATTERBOX_DEVICE's; unset S3Gen devices follow it
    monkeypatch.delenv("CHATTERBOX_S3GEN_DEVICES")
    monkeypatch.setenv("CHATTERBOX_T3_DEVICE", "cuda:1")
    assert resolve_placement(Settings(device="cuda:0"), gpus=2) == Placement(CUDA[1], (CUDA[1],))
    monkeypatch.delenv("CHATTERBOX_T3_DEVICE")
    assert resolve_placement(Settings(device="cpu"), gpus=2) == Placement(CPU, (CPU,))
    # a loaded model's device stands for T3's
    assert resolve_placement(Settings(), gpus=0, t3_device=CUDA[3]).s3gen_devices == (CUDA[3],)


@pytest.mark.parametrize(("value", "message"), [
    ("gpu", "entries must be cpu, cuda or cuda:N"),
    ("cuda:0,,cuda:1", "empty entry"),
    ("auto,cuda:1", "auto alone"),
    ("cuda:0,cuda,cuda:1", "names cuda:0 more than once; .* CHATTERBOX_S3GEN_WORKERS_PER_DEVICE"),
    ("cuda:-1", "entries must be"),
])  # fmt: skip
def test_bad_s3gen_devices_are_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("CHATTERBOX_S3GEN_DEVICES", value)
    with pytest.raises(pydantic.ValidationError, match=message):
        Settings()


def test_bad_t3_device_and_worker_counts_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(pydantic.ValidationError, match="t3_device must be auto, cpu, cuda or cuda:N"):
        Settings(t3_device="tpu")
    for workers in ("0", "17", "two"):
        monkeypatch.setenv("CHATTERBOX_S3GEN_WORKERS_PER_DEVICE", workers)
        with pytest.raises(pydantic.ValidationError, match="s3gen_workers_per_device"):
            Settings()


def test_devices_that_are_not_visible_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATTERBOX_S3GEN_DEVICES", "cuda:0,cuda:2")
    with pytest.raises(PlacementError, match=r"CHATTERBOX_S3GEN_DEVICES names cuda:2, but 2 GPUs are visible "
                                             r"\(cuda:0 to cuda:1\)"):  # fmt: skip
        resolve_placement(Settings(), gpus=2)
    monkeypatch.setenv("CHATTERBOX_S3GEN_DEVICES", "cuda")
    with pytest.raises(PlacementError, match="names cuda:0, but no GPU is visible"):
        resolve_placement(Settings(), gpus=0)
    monkeypatch.delenv("CHATTERBOX_S3GEN_DEVICES")
    with pytest.raises(PlacementError, match=r"CHATTERBOX_T3_DEVICE names cuda:1, but 1 GPU is visible \(cuda:0\)"):
        resolve_placement(Settings(t3_device="cuda:1"), gpus=1)
    with pytest.raises(PlacementError, match="vLLM's T3 engines take GPUs 0 to 1"):
        resolve_placement(Settings(t3_device="cuda:2", t3_data_parallel_size=2), gpus=4)
