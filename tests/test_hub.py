"""Checkpoint resolution through huggingface_hub: the cache layout, offline mode, and the error users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatterbox_vllm.checkpoint.config import load_model_config
from chatterbox_vllm.checkpoint.hub import download, resolve_model
from chatterbox_vllm.checkpoint.layout import ENGLISH, HF_REPO_ID, NANO, TURBO
from chatterbox_vllm.checkpoint.weights import CheckpointError
from chatterbox_vllm.random_checkpoint import write_random_checkpoint

REVISION = "0123456789abcdef0123456789abcdef01234567"


def hub_cache_from(checkpoint: Path, cache_dir: Path) -> Path:
    """Lay out a checkpoint as huggingface_hub stores a download: blobs, snapshots/<rev>, refs/main."""
    repo = cache_dir / ("models--" + HF_REPO_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    for name in ENGLISH.files:
        (snapshot / name).symlink_to(checkpoint / name)
    return snapshot


def test_offline_download_uses_the_hub_cache(english_tiny_checkpoint: Path, tmp_path: Path) -> None:
    snapshot = hub_cache_from(english_tiny_checkpoint, tmp_path / "hub")
    got = download("english", cache_dir=tmp_path / "hub", local_files_only=True)
    assert got == snapshot
    directory, layout = resolve_model(str(got))
    assert layout.variant == "english" and directory == got


def test_offline_without_cache_says_how_to_use_a_local_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        download("multilingual", cache_dir=tmp_path / "empty", local_files_only=True)
    message = str(err.value)
    assert "local Hugging Face cache" in message
    assert "CHATTERBOX_MODEL=/path/to/dir" in message and "make-checkpoint" in message


def test_hf_hub_offline_env_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="local Hugging Face cache"):
        download("english", cache_dir=tmp_path / "empty")


def test_unknown_model_setting(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="neither a known name"):
        resolve_model("spanish-only")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no Chatterbox T3 weights"):
        resolve_model(str(tmp_path / "empty"))


@pytest.mark.parametrize("name,repo", [("turbo", TURBO.repo_id), ("chatterbox-nano", NANO.repo_id)])
def test_turbo_and_nano_come_from_their_own_repos(name: str, repo: str, tmp_path: Path) -> None:
    """`turbo`/`nano` resolve through huggingface_hub to ResembleAI/chatterbox-turbo / -nano, with the GPT-2
    tokenizer files; the optional tokenizer config is fetched when the repo has it, not required."""
    layout = NANO if "nano" in name else TURBO
    cache = tmp_path / "hub"
    snapshot = cache / ("models--" + repo.replace("/", "--")) / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(REVISION)
    for file in layout.files:
        (snapshot / file).write_bytes(b"")  # resolution looks at names only
    directory, resolved = resolve_model(name, cache_dir=cache, local_files_only=True)
    assert directory == snapshot and resolved == layout
    assert set(layout.files) >= {layout.t3, "s3gen_meanflow.safetensors", "vocab.json", "merges.txt", "added_tokens.json"}
    (snapshot / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match="missing merges.txt"):
        resolve_model(name, cache_dir=cache, local_files_only=True)
    with pytest.raises(CheckpointError, match=repo):
        download(layout.variant, cache_dir=tmp_path / "empty", local_files_only=True)


def test_random_tiny_nano_is_written_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a directory passed (a library load), the settings' cache directory: CHATTERBOX_CACHE_DIR here."""
    monkeypatch.setenv("CHATTERBOX_CACHE_DIR", str(tmp_path))
    directory, layout = resolve_model("random-tiny-nano")
    assert layout == NANO and directory == tmp_path / "random" / "nano-tiny-seed0"
    assert all((directory / name).is_file() for name in (*layout.files, *layout.optional_files))
    assert resolve_model("random-tiny-nano") == (directory, layout)  # reused, not rewritten
    # its pieces stop at a speaking pace for GPT-2 text tokens (random weights never sample the stop token)
    assert load_model_config(directory, layout).speech_tokens_per_text_token == 8.0  # GPT-2 tokens


def test_random_tiny_written_without_a_speaking_pace_gets_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A random-tiny cache from before checkpoints recorded a pace: its small files are written again, not its
    weights."""
    directory = write_random_checkpoint("english", "tiny", 0, tmp_path / "random" / "english-tiny-seed0",
                                        speaking_pace=False)  # fmt: skip
    assert load_model_config(directory, ENGLISH).speech_tokens_per_text_token is None
    weights = directory / ENGLISH.t3
    written = weights.stat().st_mtime_ns
    assert resolve_model("random-tiny", server_cache_dir=tmp_path) == (directory, ENGLISH)  # as the server passes it
    assert load_model_config(directory, ENGLISH).speech_tokens_per_text_token == 2.5
    assert weights.stat().st_mtime_ns == written
