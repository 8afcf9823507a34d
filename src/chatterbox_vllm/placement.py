"""Where each stage runs on a host of one or more GPUs: the device T3 gets, and one device per S3Gen worker.

Under load S3Gen is the stage that saturates first (T3 had ~10x headroom at 64 concurrent on an H200), so a host's
other GPUs serve it best as more S3Gen workers, not as copies of the whole pipeline. The settings say where
(CHATTERBOX_T3_DEVICE, CHATTERBOX_S3GEN_DEVICES, CHATTERBOX_S3GEN_WORKERS_PER_DEVICE); `resolve_placement` turns
them into a `Placement` against the GPUs this process sees, refusing devices that are not there with the reason.
Unset, the placement is today's: one S3Gen worker beside T3, on its device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .settings import Settings


class PlacementError(ValueError):
    """The settings place a stage on a device this host does not have; the message says which and what is visible."""


@dataclass(frozen=True)
class Placement:
    """T3's device and each S3Gen worker's device (device by device, `workers_per_device` each)."""

    t3_device: torch.device
    s3gen_devices: tuple[torch.device, ...]

    @property
    def workers(self) -> int:
        return len(self.s3gen_devices)

    def s3gen_in_processes(self, layout: str) -> bool:
        """Whether S3Gen runs in worker processes: asked for (`layout` "process"), or needed because there is more
        than one worker or the worker is not on T3's device (the thread layout's S3Gen is the model's own, on T3's
        device)."""
        return layout == "process" or self.workers > 1 or self.s3gen_devices[0] != self.t3_device

    def gpus(self) -> list[torch.device]:
        """Every GPU a stage runs on, in index order."""
        devices = {self.t3_device, *self.s3gen_devices}
        return sorted((d for d in devices if d.type == "cuda"), key=lambda d: d.index or 0)

    def describe(self) -> str:
        """For the start-up log: `T3 on cuda:0; S3Gen workers on cuda:0, cuda:1`."""
        workers = ", ".join(str(device) for device in self.s3gen_devices)
        return f"T3 on {self.t3_device}; S3Gen worker{'s' if self.workers > 1 else ''} on {workers}"


def visible_gpus() -> int:
    """The GPUs this process sees (CUDA_VISIBLE_DEVICES applied); 0 without CUDA."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_placement(
    settings: Settings, gpus: int | None = None, *, t3_device: torch.device | None = None
) -> Placement:
    """The placement the settings ask for on a host of `gpus` visible GPUs (None: count them); `t3_device`: the
    device a loaded model's T3 is on (None: the settings'). Raises PlacementError for a device that is not visible,
    or T3 off the first GPU with several T3 engines."""
    gpus = visible_gpus() if gpus is None else gpus
    t3 = _t3_device(settings, gpus) if t3_device is None else t3_device
    if settings.s3gen_devices is None:
        devices = [t3]
    elif settings.s3gen_devices == "auto":
        devices = [torch.device("cuda", i) for i in range(gpus)] or [torch.device("cpu")]
    else:
        devices = [_visible(torch.device(name), gpus, "CHATTERBOX_S3GEN_DEVICES")
                   for name in settings.s3gen_devices.split(",")]  # fmt: skip
    per_device = settings.s3gen_workers_per_device
    return Placement(t3, tuple(device for device in devices for _ in range(per_device)))


def _t3_device(settings: Settings, gpus: int) -> torch.device:
    if settings.t3_device != "auto":
        device = _visible(torch.device(settings.t3_device), gpus, "CHATTERBOX_T3_DEVICE")
        if settings.t3_data_parallel_size > 1 and device != torch.device("cuda", 0):
            raise PlacementError(
                f"CHATTERBOX_T3_DEVICE={device} with CHATTERBOX_T3_DATA_PARALLEL_SIZE="
                f"{settings.t3_data_parallel_size}: vLLM's T3 engines take GPUs 0 to "
                f"{settings.t3_data_parallel_size - 1}; leave CHATTERBOX_T3_DEVICE unset (or cuda:0)"
            )
        return device
    if settings.device != "auto":
        return torch.device("cuda", 0) if settings.device == "cuda" else torch.device(settings.device)
    return torch.device("cuda", 0) if gpus else torch.device("cpu")


def _visible(device: torch.device, gpus: int, setting: str) -> torch.device:
    """`device` with an index (cuda is cuda:0), when this host has it."""
    if device.type != "cuda":
        return device
    index = device.index or 0
    if index >= gpus:
        seen = "no GPU is visible" if gpus == 0 else f"{gpus} GPU{'s are' if gpus > 1 else ' is'} visible " \
            f"(cuda:0{f' to cuda:{gpus - 1}' if gpus > 1 else ''})"  # fmt: skip
        raise PlacementError(f"{setting} names cuda:{index}, but {seen} (CUDA_VISIBLE_DEVICES applied)")
    return torch.device("cuda", index)
