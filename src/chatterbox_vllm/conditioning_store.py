"""Voice conditionals kept on disk beside the clips they were computed from, so a voice is analysed once.

Analysing a clip (voice encoder, S3 tokenizer, CAMPPlus, mel) costs ~1 s on a GPU and far more with the speech
tokenizer on the CPU; a restart would otherwise pay it again for every voice. Each voice's results for one model
live in `<voices dir>/.conditioning/<voice>/<variant>.safetensors` (hidden, so the voice library does not list
them), with metadata saying what they were made from: the format version, the model's fingerprint and the clip's
SHA-256. A file whose metadata does not match the model and clip at hand, or that cannot be read, is ignored (and
then overwritten by a fresh analysis), never used.

The fingerprint covers everything the analysis depends on: the voice encoder's and S3Gen's weight files (name,
size, modification time, and the blob name a Hugging Face cache links them to), the model config written beside
random checkpoints, the speech-prompt length and the loudness target. `CONDITIONING_FORMAT` is raised whenever the
analysis code changes what it computes, which invalidates every stored file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .conditioning import Conditionals
from .models.t3 import T3Cond

log = logging.getLogger(__name__)

CONDITIONING_FORMAT = "1"
STORE_DIRNAME = ".conditioning"
# S3Gen's reference dict: the entries a stored file holds (prompt_feat_len is always None and is not stored).
_GEN_KEYS = ("prompt_token", "prompt_token_len", "prompt_feat", "embedding")
_TENSOR_KEYS = ("speaker_emb", "cond_prompt_speech_tokens", *_GEN_KEYS)


def model_fingerprint(directory: Path, files: Iterable[str], parameters: dict[str, object]) -> str:
    """A hash of what a model's voice analysis depends on: `files` of the checkpoint `directory` (by name, size,
    modification time and the name a symlink resolves to) and `parameters` (JSON-serialisable settings)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CONDITIONING_FORMAT, **parameters}, sort_keys=True).encode())
    for name in sorted(set(files)):
        path = directory / name
        try:
            stat = path.stat()
            line = f"{name}\0{path.resolve().name}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
        except OSError:
            line = f"{name}\0missing\n"
        digest.update(line.encode())
    return digest.hexdigest()


def forget_voice(voices_dir: Path, stem: str) -> None:
    """Remove every stored conditioning of one voice (its clip was deleted)."""
    folder = voices_dir / STORE_DIRNAME / stem
    if folder.parent == voices_dir / STORE_DIRNAME and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)


class ConditioningStore:
    """One model's stored conditionals of the clips in one voices directory."""

    def __init__(self, voices_dir: Path, model: str, fingerprint: str) -> None:
        """`model`: the file name per voice (the variant: one server serves each variant once)."""
        self.root = Path(voices_dir) / STORE_DIRNAME
        self.model = model
        self.fingerprint = fingerprint

    def path(self, stem: str) -> Path:
        """Where the conditionals of the voice whose clip is `<stem>.<ext>` are kept."""
        folder = self.root / stem
        if folder.parent != self.root or stem in ("", ".", ".."):
            raise ValueError(f"not a voice file name: {stem!r}")
        return folder / f"{self.model}.safetensors"

    def load(self, stem: str, clip_sha: str, device: torch.device | str) -> Conditionals | None:
        """The stored conditionals of this clip for this model (on `device`), or None (and why, logged)
        when there is none, it was made for another model or clip, or it is damaged."""
        path = self.path(stem)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = dict(handle.metadata() or {})
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            log.warning("stored conditioning %s is unreadable (%s); analysing the clip again", path, exc)
            return None
        expected = {"format": CONDITIONING_FORMAT, "fingerprint": self.fingerprint, "clip_sha256": clip_sha}
        stale = [key for key, value in expected.items() if metadata.get(key) != value]
        if stale:
            what = " and ".join(
                {"format": "format", "fingerprint": "model", "clip_sha256": "clip"}[key] for key in stale
            )
            log.info("stored conditioning %s was made for another %s; analysing the clip again", path, what)
            return None
        missing = [key for key in _TENSOR_KEYS if key not in tensors]
        if missing or metadata.get("tensors_sha256") != _tensors_sha256(tensors):
            log.warning("stored conditioning %s is damaged; analysing the clip again", path)
            return None
        t3 = T3Cond(
            speaker_emb=tensors["speaker_emb"].to(device),
            cond_prompt_speech_tokens=tensors["cond_prompt_speech_tokens"].to(device),
            emotion_adv=torch.full((1, 1, 1), 0.5, device=device),
        )
        gen: dict = {key: tensors[key].to(device) for key in _GEN_KEYS}
        gen["prompt_feat_len"] = None
        return Conditionals(t3=t3, gen=gen)

    def save(self, stem: str, clip_sha: str, conds: Conditionals) -> Path | None:
        """Write the conditionals atomically (readers never see half a file); a failure (read-only directory, full
        disk) is logged and leaves the voice working, analysed again on the next start."""
        path = self.path(stem)
        found = {"speaker_emb": conds.t3.speaker_emb, "cond_prompt_speech_tokens": conds.t3.cond_prompt_speech_tokens}
        found.update({key: conds.gen[key] for key in _GEN_KEYS})
        missing = sorted(key for key, value in found.items() if value is None)
        if missing:
            raise ValueError(f"a voice's conditionals lack {', '.join(missing)}: nothing to store")
        tensors = {
            key: value.detach().to("cpu").contiguous().clone() for key, value in found.items() if value is not None
        }
        metadata = {"format": CONDITIONING_FORMAT, "fingerprint": self.fingerprint, "clip_sha256": clip_sha,
                    "model": self.model, "tensors_sha256": _tensors_sha256(tensors)}  # fmt: skip
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{self.model}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            try:
                save_file(tensors, tmp_name, metadata=metadata)
                os.replace(tmp_name, path)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("cannot store the conditioning of voice %r at %s: %s", stem, path, exc)
            return None
        return path


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A checksum of the stored tensors (names, dtypes, shapes, bytes): a file damaged past its header is caught."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
