"""The voices a speech request may name: the built-in one, OpenAI's names, language codes and uploaded clips.

* ``default`` is the checkpoint's built-in voice.
* OpenAI's voice names (``alloy``, ``nova``, ...) all speak with the built-in voice, so OpenAI clients work
  unchanged; uploading a voice named ``alloy`` (or dropping ``alloy.wav``, .mp3/.flac/.ogg, into the voices
  directory) gives that name its own voice, and deleting it gives the name back to the built-in voice.
* With the multilingual model, a language code (``fr``, ``pt-BR``) is the built-in voice speaking that language;
  a dropped-in ``fr.wav`` likewise replaces the voice for it.
* Every other audio file in the directory is a cloned voice whose id is the file's stem. Uploads are decoded,
  checked and stored there as 16-bit WAV, so they survive a restart and are cheap and safe to load later. What the
  models compute from a clip is kept beside it, in the hidden `.conditioning/` folder (`conditioning_store.py`).

The server calls one library from several threads, so every look-up and change of the directory holds a lock.
"""

from __future__ import annotations

import builtins  # VoiceLibrary.list shadows the builtin in its class body
import difflib
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf

from ..audio.io import AudioDecodeError, AudioTooLongError, UnreadableAudioError, decode_audio
from ..conditioning_store import forget_voice
from ..text.languages import SUPPORTED_LANGUAGES, UnsupportedLanguageError, validate_language

log = logging.getLogger(__name__)

OPENAI_VOICES: tuple[str, ...] = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
DEFAULT_VOICE = "default"
# Read from the directory in this order of preference when one id has several files.
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg")
READABLE_FORMATS = "send a WAV, MP3, FLAC or OGG (Vorbis or Opus) file"  # what libsndfile decodes for us
MIN_SECONDS = 1.0
MAX_SECONDS = 60.0
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}")
# A language tag as clients send it: a primary code with optional script/region subtags ("pt-BR", "zh_Hant").
# Narrower than BCP 47 on purpose, so that names like "fr-marie" stay ordinary voice names.
_LANGUAGE_TAG = re.compile(r"[a-z]{2}(?:[-_](?:[a-z]{4}|[a-z]{2}|[0-9]{3})){0,2}")
_MAX_LISTED = 10  # voice ids an unknown-voice message names before it says "and N more"

VoiceKind = Literal["builtin", "openai", "language", "custom"]


@dataclass(frozen=True)
class Voice:
    """A resolved voice: `path` is the reference clip, or None for the checkpoint's built-in voice."""

    id: str
    name: str
    kind: VoiceKind
    path: Path | None = None
    language: str | None = None


class UnknownVoiceError(ValueError):
    """A voice name nothing answers to; the message lists valid ones. `language` is the language code the name
    denotes when it is one (a voice only a multilingual model speaks)."""

    def __init__(self, message: str, language: str | None = None) -> None:
        super().__init__(message)
        self.language = language


class VoiceUploadError(ValueError):
    """An upload (or a deletion) the library refuses; the message says what is wrong, `param` which field and
    `code` what kind of refusal it is (the API's error code)."""

    def __init__(self, message: str, param: str = "audio_sample", code: str = "invalid_audio") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class VoiceNameError(VoiceUploadError):
    """The voice's name is unusable (empty, too long, a path)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="name", code="invalid_voice_name")


class VoiceExistsError(VoiceUploadError):
    """An upload whose id is taken; a separate class so the server can answer 409 Conflict."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="name", code="voice_exists")


class VoiceStorageError(Exception):
    """The voices directory cannot be created or written (permissions, a read-only or full disk): a server fault."""


class VoiceNotFoundError(KeyError):
    """Deleting a voice that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "voice not found"


def _language_code(name: str) -> str | None:
    """The supported language `name` denotes ("FR", "pt-BR" -> "fr", "pt"), else None."""
    tag = name.strip().lower()
    if not _LANGUAGE_TAG.fullmatch(tag):
        return None
    try:
        return validate_language(tag, multilingual=True)
    except UnsupportedLanguageError:
        return None


def _is_reserved(voice_id: str) -> bool:
    """Names uploads may not take, whatever the model: `default` (always the checkpoint's voice) and language codes
    (the built-in voice speaking a language; reserved for the English model too, so one voices directory serves
    both models alike). OpenAI's names may be taken: the upload then speaks for that name."""
    lowered = voice_id.lower()
    return lowered == DEFAULT_VOICE or _language_code(lowered) is not None


def _is_builtin_name(name: str) -> bool:
    lowered = name.strip().lower()
    return lowered == DEFAULT_VOICE or lowered in OPENAI_VOICES or _language_code(lowered) is not None


def _title(name: str) -> str:
    return name[:1].upper() + name[1:]


class VoiceLibrary:
    """Maps request voice names to voices and manages the uploaded ones in `directory`."""

    def __init__(
        self,
        directory: Path | None,
        *,
        multilingual: bool,
        max_upload_bytes: int = 10 * 2**20,
        max_voices: int = 1000,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.multilingual = multilingual
        self.max_upload_bytes = max_upload_bytes
        self.max_voices = max_voices
        self._lock = threading.RLock()
        self._files: dict[str, Path] = {}  # stem -> clip, every audio file in the directory
        self._names: dict[Path, tuple[int, str]] = {}  # clip -> (mtime_ns, display name), read from WAV titles
        self.unwritable: str | None = None  # why the directory could not be created, when it could not
        self._scan()

    def create_directory(self) -> None:
        """Make the voices directory (the server does at start). A failure is logged and kept: the built-in voices
        still serve, and uploads say why they cannot be stored."""
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.unwritable = None
        except OSError as exc:
            self.unwritable = exc.strerror or str(exc)
            log.error("cannot create the voices directory %s (%s): uploads will fail until it exists and is "
                      "writable; set CHATTERBOX_VOICES_DIR or --voices-dir to another directory",
                      self.directory, self.unwritable)  # fmt: skip

    # ------------------------------------------------------------------------------------------- look-ups
    def list(self) -> list[Voice]:
        """Every voice: default, OpenAI's names, custom ones sorted, then (multilingual) one per language."""
        with self._lock:
            self._scan()
            voices = [self._builtin()]
            voices += [self._openai(name) for name in OPENAI_VOICES]
            voices += [self._custom(stem) for stem in sorted(self._custom_ids(), key=lambda s: (s.lower(), s))]
            if self.multilingual:
                voices += [self._language(code) for code in SUPPORTED_LANGUAGES]
            return voices

    def resolve(self, name: str) -> Voice:
        """The voice `name` denotes; built-in names and language codes ignore case, custom ids must match exactly."""
        if not isinstance(name, str):
            raise UnknownVoiceError(f"voice must be a string, got {type(name).__name__}")
        with self._lock:
            voice = self._lookup(name)
            if voice is None or (voice.path is not None and not voice.path.is_file()):
                self._scan()  # a clip dropped in or removed since the last look
                voice = self._lookup(name)
            if voice is None:
                raise UnknownVoiceError(self._unknown_message(name), language=_language_code(name))
            return voice

    def get_path(self, name: str) -> Path | None:
        """The reference clip for `name`, or None when it speaks with the built-in voice."""
        return self.resolve(name).path

    # ------------------------------------------------------------------------------------------- changes
    def add(self, name: str, data: bytes, filename: str | None = None, *, overwrite: bool = False) -> Voice:
        """Validate an uploaded clip and store it as `<id>.wav`; nothing is written unless every check passes."""
        if self.directory is None:
            raise VoiceUploadError(
                "voice uploads need a voices directory (CHATTERBOX_VOICES_DIR)", code="uploads_disabled"
            )
        voice_id, display = self._safe_id(name)
        label = filename or "audio_sample"
        if len(data) == 0:
            raise VoiceUploadError(f"{label} is empty")
        if len(data) > self.max_upload_bytes:
            raise VoiceUploadError(
                f"{label} is {len(data) / 2**20:.1f} MiB; the limit is {self.max_upload_bytes / 2**20:.3g} MiB",
                code="file_too_large",
            )
        with self._lock:
            self._scan()
            self._check_free(voice_id, overwrite)
        wav, sample_rate = self._decode(bytes(data), label)
        target = self._target(voice_id)
        with self._lock:  # again: another thread may have taken the id while we decoded
            self._scan()
            self._check_free(voice_id, overwrite)
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._write_atomically(target, wav, sample_rate, display)
            except OSError as exc:
                log.error("cannot store voice %r in %s: %s", voice_id, self.directory, exc)
                raise VoiceStorageError(
                    f"the server cannot store voices: its voices directory is not writable ({exc.strerror or exc}); "
                    "the operator sets another with CHATTERBOX_VOICES_DIR or --voices-dir"
                ) from exc
            for stale in self._all_files(voice_id, ignore_case=True):  # an overwritten voice keeps no other file
                if stale.name != target.name and not os.path.samefile(stale, target):
                    stale.unlink(missing_ok=True)
            self._scan()
            log.info("added voice %r (%.1f s) at %s", voice_id, wav.size / sample_rate, target)
            voice = self._lookup(voice_id)
            assert voice is not None and voice.path is not None
            return voice

    def delete(self, name: str) -> None:
        """Remove an uploaded (or dropped-in) voice and what was computed from it. A clip that speaks for a built-in
        name (`alloy`, or `fr` with the multilingual model) is removed too, which gives the name back to the
        built-in voice; `default` and built-in names without a clip cannot be deleted."""
        if not isinstance(name, str):
            raise VoiceNotFoundError(f"voice {name!r} does not exist")
        with self._lock:
            self._scan()
            stem = name if self._is_custom(name) else self._override_stem(name)
            if stem is None:
                if _is_builtin_name(name):
                    raise VoiceUploadError(
                        f"{name.strip()!r} is a built-in voice name with no uploaded clip to delete; "
                        "it speaks with the checkpoint's voice",
                        param="voice_id", code="voice_not_deletable",
                    )  # fmt: skip
                raise VoiceNotFoundError(f"voice {name!r} does not exist")
            assert self.directory is not None
            for path in self._all_files(stem):
                path.unlink(missing_ok=True)
            forget_voice(self.directory, stem)
            self._scan()
            log.info("deleted voice %r", stem)

    # ------------------------------------------------------------------------------------------- internals
    def _lookup(self, name: str) -> Voice | None:
        key = name.strip()
        lowered = key.lower()
        if lowered == DEFAULT_VOICE:
            return self._builtin()
        if lowered in OPENAI_VOICES:
            return self._openai(lowered)
        if self._is_custom(key):
            return self._custom(key)
        if self.multilingual and (code := _language_code(key)) is not None:
            return self._language(code)
        return None

    def _builtin(self) -> Voice:
        return Voice(DEFAULT_VOICE, "Default (built-in voice)", "builtin")

    def _openai(self, name: str) -> Voice:
        clip = self._override(name)
        if clip is not None:
            return Voice(name, self._display_name(clip, _title(name)), "custom", clip)
        return Voice(name, _title(name), "openai")

    def _language(self, code: str) -> Voice:
        language = SUPPORTED_LANGUAGES[code]
        clip = self._override(code)
        if clip is not None:
            return Voice(code, self._display_name(clip, language), "custom", clip, language=code)
        return Voice(code, f"{language} (built-in voice)", "language", language=code)

    def _custom(self, stem: str) -> Voice:
        path = self._files[stem]
        return Voice(stem, self._display_name(path, stem), "custom", path)

    def _override(self, name: str) -> Path | None:
        """A dropped-in clip for a built-in name; its file name may use any case ("Alloy.wav")."""
        for stem in sorted(self._files):
            if stem.lower() == name:
                return self._files[stem]
        return None

    def _override_stem(self, name: str) -> str | None:
        """The stem of the clip that speaks for built-in name `name` (an OpenAI name, or a language code when this
        library is multilingual), or None."""
        lowered = name.strip().lower()
        if lowered in OPENAI_VOICES:
            clip = self._override(lowered)
        elif self.multilingual and (code := _language_code(lowered)) is not None:
            clip = self._override(code)
        else:
            clip = None
        return clip.stem if clip is not None else None

    def _is_custom(self, stem: str) -> bool:
        """Whether a directory clip is a voice of its own rather than the clip for a built-in name."""
        if stem not in self._files:
            return False
        lowered = stem.lower()
        if lowered == DEFAULT_VOICE:
            return False  # "default" is always the checkpoint's voice
        return not (lowered in OPENAI_VOICES or (self.multilingual and lowered in SUPPORTED_LANGUAGES))

    def _custom_ids(self) -> builtins.list[str]:
        return [stem for stem in self._files if self._is_custom(stem)]

    def _scan(self) -> None:
        """Re-read the directory: the files are the library's only state, so restarts and edits by hand agree."""
        files: dict[str, Path] = {}
        if self.directory is not None and self.directory.is_dir():
            by_stem: dict[str, builtins.list[Path]] = {}
            try:
                entries = list(os.scandir(self.directory))
            except OSError as exc:
                log.warning("cannot read the voices directory %s: %s", self.directory, exc)
                entries = []
            for entry in entries:
                path = Path(entry.path)
                if entry.name.startswith(".") or path.suffix.lower() not in AUDIO_EXTENSIONS:
                    continue  # hidden and temporary files, sidecars, anything not audio
                try:
                    if not entry.is_file():
                        continue
                except OSError:
                    continue
                by_stem.setdefault(path.stem, []).append(path)
            for stem, paths in by_stem.items():
                files[stem] = min(paths, key=lambda p: (AUDIO_EXTENSIONS.index(p.suffix.lower()), p.name))
        self._files = files
        present = set(files.values())
        self._names = {p: v for p, v in self._names.items() if p in present}

    def _all_files(self, stem: str, *, ignore_case: bool = False) -> builtins.list[Path]:
        """Every audio file of one id, whatever its format (and, if asked, the case of its name)."""
        assert self.directory is not None
        want = stem.lower() if ignore_case else stem
        return [
            path
            for path in self.directory.iterdir()
            if (path.stem.lower() if ignore_case else path.stem) == want and path.suffix.lower() in AUDIO_EXTENSIONS
        ]

    def _display_name(self, path: Path, fallback: str) -> str:
        """The name given at upload, kept in the WAV's title tag; the file stem for clips without one."""
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return fallback
        cached = self._names.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        name = fallback
        try:
            with sf.SoundFile(path) as f:
                title = (f.title or "").strip()
            if title:
                name = title
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError):
            pass  # an unreadable clip still lists; using it reports the problem
        self._names[path] = (mtime, name)
        return name

    def _safe_id(self, name: str) -> tuple[str, str]:
        """(file-safe id, display name) for a requested voice name, or VoiceUploadError saying why not."""
        if not isinstance(name, str):
            raise VoiceNameError("name must be a string")
        display = name.strip()
        if not display:
            raise VoiceNameError("name is empty; give the voice a name")
        if not NAME_PATTERN.fullmatch(display):
            raise VoiceNameError(
                f"invalid voice name {display[:80]!r}: use 1-64 characters, letters, digits, spaces, '_', '.' "
                "or '-', starting with a letter or digit"
            )
        voice_id = re.sub(r" +", "-", display.lower())
        if ".." in voice_id or voice_id.endswith("."):
            raise VoiceNameError(f"invalid voice name {display!r}: it must not contain '..' or end with '.'")
        if voice_id == DEFAULT_VOICE:
            raise VoiceNameError(
                f"{display!r} is the checkpoint's built-in voice and cannot be replaced; choose another name"
            )
        if _is_reserved(voice_id):
            raise VoiceNameError(
                f"{display!r} is a language code, reserved for the built-in voice speaking that language; choose "
                "another name (to give a language a voice of its own, put <code>.wav in the voices directory)"
            )
        return voice_id, display

    def _check_free(self, voice_id: str, overwrite: bool) -> None:
        taken = [stem for stem in self._files if stem.lower() == voice_id]  # case-blind: macOS and Windows are
        if taken and not overwrite:
            raise VoiceExistsError(f"a voice {taken[0]!r} already exists; delete it first or choose another name")
        if not taken and len(self._custom_ids()) >= self.max_voices:
            raise VoiceUploadError(
                f"the library holds its maximum of {self.max_voices} voices; delete one first",
                param="name", code="voice_limit_reached",
            )  # fmt: skip

    def _target(self, voice_id: str) -> Path:
        """`<id>.wav`, proven to lie directly inside the voices directory."""
        assert self.directory is not None
        root = self.directory.resolve()
        target = (root / f"{voice_id}.wav").resolve()
        if target.parent != root or target.name != f"{voice_id}.wav":
            raise VoiceNameError(f"invalid voice name {voice_id!r}")
        return target

    def _decode(self, data: bytes, label: str) -> tuple[np.ndarray, int]:
        """The clip as mono float32 at its own rate, checked to be usable as a voice sample."""
        try:
            wav, sample_rate = decode_audio(data, max_seconds=MAX_SECONDS, name=label)
        except AudioTooLongError as exc:
            raise VoiceUploadError(
                f"{label} lasts longer than {MAX_SECONDS:g} s; a voice sample may last at most {MAX_SECONDS:g} s "
                "(5-15 s of clear speech works best)"
            ) from exc
        except UnreadableAudioError as exc:
            log.info("refused an upload: %s", exc)  # the decoder's words are for the log, not the client
            raise VoiceUploadError(f"{label} is not audio this server can read; {READABLE_FORMATS}") from exc
        except AudioDecodeError as exc:  # audio, but not a usable recording: the reason is the client's to read
            raise VoiceUploadError(str(exc)) from exc
        seconds = wav.size / sample_rate
        if seconds < MIN_SECONDS:
            raise VoiceUploadError(f"{label} is {seconds:.2f} s long; a voice sample needs at least {MIN_SECONDS:g} s")
        if seconds > MAX_SECONDS:
            raise VoiceUploadError(
                f"{label} is {seconds:.1f} s long; a voice sample may last at most {MAX_SECONDS:g} s "
                "(5-15 s of clear speech works best)"
            )
        if float(np.max(np.abs(wav))) < 1e-4:
            raise VoiceUploadError(f"{label} is silent")
        return wav, sample_rate

    def _write_atomically(self, target: Path, wav: np.ndarray, sample_rate: int, display: str) -> None:
        """Write beside the target and rename over it, so readers never see half a file."""
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                with sf.SoundFile(handle, "w", sample_rate, 1, subtype="PCM_16", format="WAV") as f:
                    f.title = display
                    f.write(np.clip(wav, -1.0, 1.0))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _unknown_message(self, name: str) -> str:
        """Names the closest voice, then the first few of all (the caller's own voices first)."""
        custom = sorted(self._custom_ids(), key=lambda s: (s.lower(), s))
        known = [DEFAULT_VOICE, *custom, *OPENAI_VOICES]
        message = f"unknown voice {name[:80]!r}"
        close = difflib.get_close_matches(name.strip().lower(), [v.lower() for v in known], n=1)
        if close:
            message += f" (did you mean {next(v for v in known if v.lower() == close[0])!r}?)"
        message += f"; known voices: {', '.join(known[:_MAX_LISTED])}"
        if len(known) > _MAX_LISTED:
            message += f" and {len(known) - _MAX_LISTED} more"
        if self.multilingual:
            message += ", and language codes such as fr or de"
        return message + " (GET /v1/audio/voices lists them all)"
