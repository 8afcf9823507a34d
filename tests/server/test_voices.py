"""The voice library over real files: names, drop-in overrides, uploads and their refusals, persistence."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from chatterbox_vllm.server.voices import (
    OPENAI_VOICES,
    UnknownVoiceError,
    Voice,
    VoiceExistsError,
    VoiceLibrary,
    VoiceNotFoundError,
    VoiceStorageError,
    VoiceUploadError,
)
from chatterbox_vllm.text.languages import SUPPORTED_LANGUAGES

from server_utils import flac_bomb

RATE = 24000


def _sine(seconds: float = 2.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _wav_bytes(seconds: float = 2.0, rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, _sine(seconds, rate), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _mp3_bytes(seconds: float = 2.0, rate: int = 44100) -> bytes:
    """An MP3 made by PyAV (FFmpeg's encoder), independent of the libsndfile that decodes it."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as container:
        stream = container.add_stream("mp3", rate=rate)
        samples = _sine(seconds, rate)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def _drop_in(directory: Path, filename: str, seconds: float = 2.0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    sf.write(path, _sine(seconds), RATE)
    return path


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture
def voices_dir(tmp_path: Path) -> Path:
    return tmp_path / "voices"


@pytest.fixture
def library(voices_dir: Path) -> VoiceLibrary:
    return VoiceLibrary(voices_dir, multilingual=False)


# ---------------------------------------------------------------------------------------------- listing
def test_english_listing_is_default_then_openai_names(library: VoiceLibrary) -> None:
    voices = library.list()
    assert [v.id for v in voices] == ["default", *OPENAI_VOICES]
    assert voices[0] == Voice("default", voices[0].name, "builtin")
    assert all(v.kind == "openai" and v.path is None and v.language is None for v in voices[1:])
    assert len(OPENAI_VOICES) == 13 and {"alloy", "marin", "cedar", "verse"} <= set(OPENAI_VOICES)


def test_multilingual_listing_adds_languages_after_custom(voices_dir: Path) -> None:
    _drop_in(voices_dir, "zed.wav")
    _drop_in(voices_dir, "anna.flac")
    voices = VoiceLibrary(voices_dir, multilingual=True).list()
    ids = [v.id for v in voices]
    assert ids == ["default", *OPENAI_VOICES, "anna", "zed", *SUPPORTED_LANGUAGES]
    french = next(v for v in voices if v.id == "fr")
    assert french.kind == "language" and french.language == "fr" and french.path is None
    assert "French" in french.name


def test_directory_clips_are_custom_voices_sorted(voices_dir: Path) -> None:
    for name in ("b-voice.wav", "a-voice.mp3", "C.ogg", "notes.txt", ".hidden.wav"):
        if name.endswith(".txt"):
            voices_dir.mkdir(parents=True, exist_ok=True)
            (voices_dir / name).write_text("not a voice")
        else:
            _drop_in(voices_dir, name)
    custom = [v for v in VoiceLibrary(voices_dir, multilingual=False).list() if v.kind == "custom"]
    assert [v.id for v in custom] == ["a-voice", "b-voice", "C"]
    assert all(v.path is not None and v.path.parent == voices_dir for v in custom)


def test_no_directory_lists_only_built_in_names() -> None:
    library = VoiceLibrary(None, multilingual=False)
    assert [v.id for v in library.list()] == ["default", *OPENAI_VOICES]
    assert library.resolve("nova").kind == "openai"


# ---------------------------------------------------------------------------------------------- resolving
def test_openai_names_use_the_built_in_voice_case_insensitively(library: VoiceLibrary) -> None:
    for name in ("alloy", "ALLOY", " Nova ", "cedar"):
        voice = library.resolve(name)
        assert voice.kind == "openai" and voice.path is None and voice.id == name.strip().lower()
    assert library.resolve("Default").kind == "builtin"
    assert library.get_path("alloy") is None


def test_dropped_in_clip_overrides_an_openai_name(voices_dir: Path) -> None:
    clip = _drop_in(voices_dir, "alloy.wav")
    library = VoiceLibrary(voices_dir, multilingual=False)
    voice = library.resolve("Alloy")
    assert voice.id == "alloy" and voice.kind == "custom" and voice.path == clip
    assert library.get_path("alloy") == clip
    assert library.resolve("echo").kind == "openai"  # the others keep the built-in voice
    listed = library.list()
    assert [v.id for v in listed] == ["default", *OPENAI_VOICES]  # listed once, in its OpenAI place
    assert next(v for v in listed if v.id == "alloy").path == clip


def test_clip_dropped_in_while_running_is_found(library: VoiceLibrary, voices_dir: Path) -> None:
    assert library.resolve("alloy").kind == "openai"
    with pytest.raises(UnknownVoiceError):
        library.resolve("newcomer")
    clip = _drop_in(voices_dir, "newcomer.wav")
    assert library.resolve("newcomer").path == clip


def test_language_codes_resolve_only_for_multilingual(voices_dir: Path) -> None:
    multi = VoiceLibrary(voices_dir, multilingual=True)
    for name, code in (("fr", "fr"), ("FR", "fr"), ("pt-BR", "pt"), ("zh_Hant", "zh"), ("en", "en")):
        voice = multi.resolve(name)
        assert (voice.kind, voice.language, voice.path, voice.id) == ("language", code, None, code)
    with pytest.raises(UnknownVoiceError):
        multi.resolve("fr-marie")  # not a language tag: an ordinary (unknown) voice name
    english = VoiceLibrary(voices_dir, multilingual=False)
    for name in ("fr", "en", "pt-BR"):
        with pytest.raises(UnknownVoiceError):
            english.resolve(name)


def test_dropped_in_clip_overrides_a_language(voices_dir: Path) -> None:
    clip = _drop_in(voices_dir, "fr.wav")
    voice = VoiceLibrary(voices_dir, multilingual=True).resolve("FR")
    assert (voice.kind, voice.language, voice.path) == ("custom", "fr", clip)


def test_custom_ids_are_exact(voices_dir: Path) -> None:
    _drop_in(voices_dir, "Narrator.wav")
    library = VoiceLibrary(voices_dir, multilingual=False)
    assert library.resolve("Narrator").kind == "custom"
    with pytest.raises(UnknownVoiceError):
        library.resolve("narrator")


def test_unknown_voice_message_lists_the_first_known_ids(voices_dir: Path) -> None:
    _drop_in(voices_dir, "narrator.wav")
    with pytest.raises(UnknownVoiceError) as caught:
        VoiceLibrary(voices_dir, multilingual=False).resolve("nobody")
    assert str(caught.value) == (
        "unknown voice 'nobody'; known voices: default, narrator, alloy, ash, ballad, coral, echo, fable, nova, onyx "
        "and 5 more (GET /v1/audio/voices lists them all)"
    )  # the caller's own voices come first
    assert caught.value.language is None
    with pytest.raises(UnknownVoiceError, match="did you mean 'alloy'"):
        VoiceLibrary(voices_dir, multilingual=False).resolve("aloy")
    with pytest.raises(UnknownVoiceError, match="did you mean 'narrator'"):
        VoiceLibrary(voices_dir, multilingual=False).resolve("Narator")
    with pytest.raises(UnknownVoiceError, match="and language codes such as fr or de"):
        VoiceLibrary(voices_dir, multilingual=True).resolve("nobody")


def test_a_language_code_unknown_to_an_english_library_says_so(voices_dir: Path) -> None:
    """The server turns this into "the multilingual model is needed" (tests/server/test_api.py)."""
    for name, code in (("fr", "fr"), ("PT-br", "pt"), ("en", "en")):
        with pytest.raises(UnknownVoiceError) as caught:
            VoiceLibrary(voices_dir, multilingual=False).resolve(name)
        assert caught.value.language == code


def test_unknown_voice_message_is_truncated_for_big_libraries(voices_dir: Path) -> None:
    for i in range(30):
        _drop_in(voices_dir, f"v{i:02d}.wav", seconds=0.1)
    with pytest.raises(UnknownVoiceError) as caught:
        VoiceLibrary(voices_dir, multilingual=False).resolve("nobody")
    message = str(caught.value)
    assert "default, v00, v01" in message and "v09" not in message and "and 34 more" in message


# ---------------------------------------------------------------------------------------------- uploads
def test_add_list_resolve_delete_round_trip(library: VoiceLibrary, voices_dir: Path) -> None:
    voice = library.add("My Voice", _wav_bytes(), "clip.wav")
    assert (voice.id, voice.name, voice.kind) == ("my-voice", "My Voice", "custom")
    assert voice.path == voices_dir.resolve() / "my-voice.wav"
    assert _files(voices_dir) == ["my-voice.wav"]
    stored, rate = sf.read(voice.path, dtype="float32")
    assert rate == RATE and sf.info(voice.path).subtype == "PCM_16"
    np.testing.assert_allclose(stored, _sine(), atol=1e-4)

    assert "my-voice" in [v.id for v in library.list()]
    assert library.resolve("my-voice") == voice
    library.delete("my-voice")
    assert _files(voices_dir) == []
    with pytest.raises(UnknownVoiceError):
        library.resolve("my-voice")
    with pytest.raises(VoiceNotFoundError, match="my-voice"):
        library.delete("my-voice")


def test_uploaded_voices_survive_a_restart(library: VoiceLibrary, voices_dir: Path) -> None:
    library.add("Grandpa Joe", _wav_bytes(3.0))
    again = VoiceLibrary(voices_dir, multilingual=True)
    voice = again.resolve("grandpa-joe")
    assert (voice.kind, voice.name) == ("custom", "Grandpa Joe")  # the display name is kept in the file
    assert "grandpa-joe" in [v.id for v in again.list()]
    again.delete("grandpa-joe")
    with pytest.raises(UnknownVoiceError):
        library.resolve("grandpa-joe")  # the first instance sees the deletion too


def test_mp3_upload_is_stored_as_wav_at_its_own_rate(library: VoiceLibrary, voices_dir: Path) -> None:
    voice = library.add("radio", _mp3_bytes(2.0, 44100), "clip.mp3")
    assert voice.path is not None and voice.path.name == "radio.wav"
    info = sf.info(voice.path)
    assert info.format == "WAV" and info.samplerate == 44100 and 1.9 < info.duration < 2.2


def test_add_creates_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "deep" / "voices"
    VoiceLibrary(directory, multilingual=False).add("first", _wav_bytes())
    assert _files(directory) == ["first.wav"]


def test_existing_id_conflicts_unless_overwrite(library: VoiceLibrary, voices_dir: Path) -> None:
    library.add("Narrator", _wav_bytes(2.0))
    with pytest.raises(VoiceExistsError, match="already exists"):
        library.add("narrator", _wav_bytes(3.0))
    assert sf.info(voices_dir / "narrator.wav").duration == pytest.approx(2.0)
    library.add("narrator", _wav_bytes(3.0), overwrite=True)
    assert sf.info(voices_dir / "narrator.wav").duration == pytest.approx(3.0)
    assert _files(voices_dir) == ["narrator.wav"]


def test_upload_conflicts_with_a_dropped_in_clip_of_another_case_or_format(voices_dir: Path) -> None:
    _drop_in(voices_dir, "Anna.flac")
    library = VoiceLibrary(voices_dir, multilingual=False)
    with pytest.raises(VoiceExistsError):
        library.add("anna", _wav_bytes())
    library.add("anna", _wav_bytes(), overwrite=True)
    assert _files(voices_dir) == ["anna.wav"]


def test_max_voices(voices_dir: Path) -> None:
    library = VoiceLibrary(voices_dir, multilingual=False, max_voices=1)
    library.add("one", _wav_bytes())
    with pytest.raises(VoiceUploadError, match="maximum of 1"):
        library.add("two", _wav_bytes())
    library.add("one", _wav_bytes(3.0), overwrite=True)  # replacing is not adding


def _silence() -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(2 * RATE, dtype=np.float32), RATE, format="WAV")
    return buffer.getvalue()


BAD_AUDIO = [
    ("too short", lambda: _wav_bytes(0.5), "at least 1 s"),
    ("too long", lambda: _wav_bytes(61.0, 8000), "at most 60 s"),
    ("random bytes", lambda: np.random.default_rng(0).bytes(4000), "not audio"),
    ("text file", lambda: b"hello, I am a text file\n" * 50, "not audio"),
    ("empty", lambda: b"", "empty"),
    ("silent", _silence, "silent"),
    ("ten minutes", lambda: _wav_bytes(600.0, 8000), "at most 60 s"),
    ("truncated to its header", lambda: _wav_bytes(2.0)[:44], "no samples|not audio"),
    ("truncated mid-header", lambda: _wav_bytes(2.0)[:30], "not audio"),
    ("64 channels", lambda: _multichannel_wav(64), "not a voice recording"),
]


def _multichannel_wav(channels: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.tile(_sine(1.5, RATE)[:, None], (1, channels)), RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_decompression_bomb_is_refused_without_decoding_it(library: VoiceLibrary, voices_dir: Path) -> None:
    import tracemalloc

    data = flac_bomb(hours=1.0)  # 172.8 M samples: 691 MB as float32
    assert len(data) < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(VoiceUploadError, match="at most 60 s"):
            library.add("bomb", data, "bomb.flac")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"decoding the refused upload allocated {peak / 2**20:.0f} MiB"
    assert _files(voices_dir) == []


@pytest.mark.parametrize(("case", "make", "message"), BAD_AUDIO, ids=[c[0] for c in BAD_AUDIO])
def test_bad_audio_is_refused_and_nothing_written(
    library: VoiceLibrary, voices_dir: Path, case: str, make, message: str
) -> None:
    with pytest.raises(VoiceUploadError, match=message):
        library.add("sample", make(), "upload.bin")
    assert _files(voices_dir) == []
    assert "sample" not in [v.id for v in library.list()]


def test_unreadable_audio_says_which_formats_work_without_the_decoders_words(library: VoiceLibrary) -> None:
    with pytest.raises(VoiceUploadError) as caught:
        library.add("sample", b"these are notes, not a recording\n" * 60, "notes.wav")
    assert str(caught.value) == "notes.wav is not audio this server can read; send a WAV, MP3, FLAC or OGG " \
        "(Vorbis or Opus) file"
    assert caught.value.code == "invalid_audio" and caught.value.param == "audio_sample"
    with pytest.raises(VoiceUploadError) as caught:
        library.add("sample", _multichannel_wav(64), "many.wav")
    assert str(caught.value).startswith("many.wav: 64 channels")  # audio, but no voice: the reason is shown


def test_too_big_upload_names_the_limit(voices_dir: Path) -> None:
    library = VoiceLibrary(voices_dir, multilingual=False, max_upload_bytes=2**20)
    data = _wav_bytes(30.0)  # ~1.4 MiB
    with pytest.raises(VoiceUploadError, match="limit is 1 MiB"):
        library.add("big", data)
    assert _files(voices_dir) == []


BAD_NAMES = [
    ("../evil", "invalid voice name"),
    ("a/b", "invalid voice name"),
    ("a\\b", "invalid voice name"),
    ("..", "invalid voice name"),
    (".hidden", "invalid voice name"),
    ("a..b", "must not contain '..'"),
    ("trailing.", "end with '.'"),
    ("nul\x00byte", "invalid voice name"),
    ("", "empty"),
    ("   ", "empty"),
    ("default", "built-in voice and cannot be replaced"),
    ("fr", "is a language code"),
    ("pt-BR", "is a language code"),
    ("x" * 65, "invalid voice name"),
    ("émile", "invalid voice name"),
]


@pytest.mark.parametrize(("name", "message"), BAD_NAMES, ids=[repr(n[0])[:20] for n in BAD_NAMES])
@pytest.mark.parametrize("multilingual", [False, True])
def test_bad_names_are_refused_and_nothing_written(
    tmp_path: Path, voices_dir: Path, name: str, message: str, multilingual: bool
) -> None:
    library = VoiceLibrary(voices_dir, multilingual=multilingual)
    with pytest.raises(VoiceUploadError, match=message):
        library.add(name, _wav_bytes())
    assert _files(voices_dir) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing escaped the directory either


def test_good_names_become_safe_ids(library: VoiceLibrary) -> None:
    assert library.add("  Spaced   Out Name ", _wav_bytes()).id == "spaced-out-name"
    assert library.add("v1.2_final", _wav_bytes()).id == "v1.2_final"
    assert library.add("x" * 64, _wav_bytes()).id == "x" * 64
    assert library.add("fr-marie", _wav_bytes()).id == "fr-marie"  # not a language tag


def test_built_in_names_without_a_clip_cannot_be_deleted(voices_dir: Path) -> None:
    _drop_in(voices_dir, "alloy.wav")
    library = VoiceLibrary(voices_dir, multilingual=True)
    for name in ("default", "nova", "fr"):
        with pytest.raises(VoiceUploadError, match="no uploaded clip to delete"):
            library.delete(name)
    assert _files(voices_dir) == ["alloy.wav"]
    with pytest.raises(VoiceNotFoundError):
        library.delete("../alloy")


def test_upload_named_like_an_openai_voice_speaks_for_it_until_deleted(library: VoiceLibrary, voices_dir: Path) -> None:
    voice = library.add("Alloy", _wav_bytes())
    assert (voice.id, voice.name, voice.kind) == ("alloy", "Alloy", "custom")
    assert voice.path == voices_dir.resolve() / "alloy.wav"
    for name in ("alloy", "ALLOY", " alloy "):
        assert library.resolve(name) == voice
    listed = library.list()
    assert [v.id for v in listed] == ["default", *OPENAI_VOICES]  # listed once, in its OpenAI place, as a clone
    assert next(v for v in listed if v.id == "alloy") == voice
    assert library.resolve("nova").kind == "openai"
    with pytest.raises(VoiceExistsError):
        library.add("alloy", _wav_bytes(3.0))
    library.delete("ALLOY")
    assert _files(voices_dir) == []
    assert library.resolve("alloy") == Voice("alloy", "Alloy", "openai")  # the built-in voice again
    with pytest.raises(VoiceUploadError, match="no uploaded clip"):
        library.delete("alloy")


def test_a_dropped_in_language_clip_can_be_deleted(voices_dir: Path) -> None:
    _drop_in(voices_dir, "fr.wav")
    library = VoiceLibrary(voices_dir, multilingual=True)
    assert library.resolve("fr").kind == "custom"
    library.delete("FR")
    assert _files(voices_dir) == [] and library.resolve("fr").kind == "language"


def test_delete_removes_what_was_computed_from_the_clip(library: VoiceLibrary, voices_dir: Path) -> None:
    library.add("narrator", _wav_bytes())
    library.add("other", _wav_bytes())
    for stem in ("narrator", "other"):
        folder = voices_dir / ".conditioning" / stem
        folder.mkdir(parents=True)
        (folder / "english.safetensors").write_bytes(b"stored")
    library.delete("narrator")
    assert sorted(p.name for p in (voices_dir / ".conditioning").iterdir()) == ["other"]
    assert [v.id for v in library.list() if v.kind == "custom"] == ["other"]  # the hidden folder is no voice


def test_an_unwritable_directory_is_reported_and_uploads_say_why(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    library = VoiceLibrary(blocker / "voices", multilingual=False)
    with caplog.at_level("ERROR"):
        library.create_directory()
    assert library.unwritable and "cannot create the voices directory" in caplog.text and str(blocker) in caplog.text
    assert library.resolve("alloy").kind == "openai" and [v.id for v in library.list()] == ["default", *OPENAI_VOICES]
    with pytest.raises(VoiceStorageError, match="voices directory is not writable .*CHATTERBOX_VOICES_DIR"):
        library.add("mine", _wav_bytes())


def test_library_without_directory_refuses_uploads() -> None:
    library = VoiceLibrary(None, multilingual=False)
    with pytest.raises(VoiceUploadError, match=r"voices directory \(CHATTERBOX_VOICES_DIR\)"):
        library.add("mine", _wav_bytes())
    with pytest.raises(VoiceNotFoundError):
        library.delete("mine")


def test_concurrent_uploads_of_one_name_store_one_voice(library: VoiceLibrary, voices_dir: Path) -> None:
    data = _wav_bytes()
    outcomes: list[str] = []

    def upload() -> None:
        try:
            library.add("race", data)
            outcomes.append("ok")
        except VoiceExistsError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
    assert _files(voices_dir) == ["race.wav"]
