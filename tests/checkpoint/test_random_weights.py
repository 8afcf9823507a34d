"""Random-weight checkpoints: exact seed-0 values, real layout, tokenizers, tiny configs, determinism, corrupt files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.paths import KIT_MANIFESTS, KIT_ROOT, OUR_MANIFESTS, manifest_path

from chatterbox_vllm import random_checkpoint as rw
from chatterbox_vllm.checkpoint.layout import CONFIG_FILE, HF_REPO_ID, LAYOUTS
from chatterbox_vllm.checkpoint.weights import CheckpointError, read_state_dict

ENGLISH_TOKENIZER_SHA256 = "d71e3a44eabb1784df9a68e9f95b251ecbf1a7af6a9f50835856b2ca9d8c14a5"


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def _checksum_tables() -> list:
    """Committed seed-0 checksums: ours (tools/reference/manifests) and the shared kit's, whichever exist."""
    tables = [(root / "checksums_seed0.json", label) for root, label in ((OUR_MANIFESTS, "ours"), (KIT_MANIFESTS, "kit"))]
    present = [pytest.param(path, id=label) for path, label in tables if path.is_file()]
    return present or [pytest.param(None, marks=pytest.mark.skip(reason="no checksums_seed0.json present"))]


# ----------------------------------------------------------------------------------------------- full size, seed 0
@pytest.mark.parametrize("table", _checksum_tables())
@pytest.mark.parametrize("variant", ["english", "multilingual"])
def test_seed0_full_checkpoint_matches_committed_checksums(variant: str, table: Path, request) -> None:
    directory = request.getfixturevalue(f"{variant}_full_checkpoint")
    expected = json.loads(table.read_text())[variant]
    assert set(expected) == {LAYOUTS[variant].voice_encoder, LAYOUTS[variant].t3, LAYOUTS[variant].s3gen}
    for file, sums in expected.items():
        state = read_state_dict(directory / file)
        assert sorted(state) == sorted(sums), file
        wrong = [name for name, tensor in state.items() if _sha(tensor) != sums[name]]
        assert not wrong, f"{file}: {len(wrong)} tensors differ, e.g. {wrong[:3]}"
        del state


@pytest.mark.parametrize("table", _checksum_tables())
def test_generator_reproduces_checksums_of_small_tensors(table: Path) -> None:
    """Cheap and independent of any cached checkpoint: regenerate every tensor up to 300k values (thousands of
    them, all rule branches incl. the fixed buffers) and compare with the committed checksums."""
    sums = json.loads(table.read_text())
    checked = 0
    for variant in ("english", "multilingual"):
        fixed = rw.fixed_buffer_values(variant, "full")
        for file, specs in rw.checkpoint_specs(variant, "full").items():
            small = [s for s in specs if math.prod(s.shape) <= 300_000]
            state = rw.build_state_dict(small, 0, fixed)
            wrong = [name for name, t in state.items() if _sha(t) != sums[variant][file][name]]
            assert not wrong, f"{file}: {wrong[:3]}"
            checked += len(state)
    assert checked > 4500


@pytest.mark.parametrize("variant", ["english", "multilingual"])
def test_full_specs_from_modules_equal_manifests(variant: str) -> None:
    for file, specs in rw.checkpoint_specs(variant, "full").items():
        manifest = json.loads(manifest_path(f"{file}.json").read_text())
        ours = [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype).removeprefix("torch.")} for s in specs]
        assert ours == manifest, file


def test_s3gen_safetensors_lacks_only_the_window() -> None:
    english = {s.name for s in rw.checkpoint_specs("english", "full")["s3gen.safetensors"]}
    multilingual = {s.name for s in rw.checkpoint_specs("multilingual", "full")["s3gen.pt"]}
    assert multilingual - english == {"tokenizer.window"} and english < multilingual


def test_fixed_buffers_are_the_constructor_values() -> None:
    reference = load_file(str(manifest_path("s3gen_fixed_buffers.safetensors")))
    ours = rw.fixed_buffer_values("english", "full")
    assert set(ours) == set(reference) == set(rw.FIXED_BUFFERS)
    for name, value in reference.items():
        assert ours[name].dtype == value.dtype and torch.equal(ours[name], value), name


# --------------------------------------------------------------------------------------------------- value rule
def test_value_rule_branches() -> None:
    def value(name, shape, dtype=torch.float32, seed=0):
        return rw.random_tensor(seed, rw.TensorSpec(name, shape, dtype))

    assert torch.equal(value("x.num_batches_tracked", (), torch.int64), torch.zeros((), dtype=torch.int64))
    assert torch.equal(value("bn.running_mean", (7,)), torch.zeros(7))
    assert torch.equal(value("bn.running_var", (7,)), torch.ones(7))
    bias = value("lstm.bias_ih_l0", (4096,))
    gain = value("norm.weight", (4096,))
    matrix = value("proj.weight", (512, 64, 3))
    assert abs(bias.std().item() - 0.02) < 0.002 and abs(bias.mean().item()) < 0.002
    assert abs(gain.mean().item() - 1.0) < 0.002 and abs(gain.std().item() - 0.02) < 0.002
    assert abs(matrix.std().item() * math.sqrt(64 * 3) - 1.0) < 0.02
    # a pure function of (seed, name): same name same value, other name or seed another value
    assert torch.equal(value("proj.weight", (512, 64, 3)), matrix)
    assert not torch.equal(value("proj2.weight", (512, 64, 3)), matrix)
    assert not torch.equal(value("proj.weight", (512, 64, 3), seed=1), matrix)


def test_conds_structure_and_determinism() -> None:
    conds = rw.make_conds(0)
    structure = json.loads(manifest_path("conds.pt.json").read_text())
    for part in ("t3", "gen"):
        assert list(conds[part]) == [row["name"] for row in structure[part]]
        for row in structure[part]:
            value = conds[part][row["name"]]
            if "value" in row:
                assert value is None
                continue
            assert str(value.dtype).removeprefix("torch.") == row["dtype"]
            assert len(row["shape"]) == value.dim(), row
            assert all(isinstance(d, str) or d == n for d, n in zip(row["shape"], value.shape)), row
    assert torch.allclose(conds["t3"]["speaker_emb"].norm(), torch.tensor(1.0))
    assert int(conds["gen"]["prompt_token"].max()) < 6561 and int(conds["t3"]["cond_prompt_speech_tokens"].min()) >= 0
    assert conds["gen"]["prompt_feat"].shape[1] in (2 * conds["gen"]["prompt_token"].shape[1] + d for d in (-1, 0, 1))
    again = rw.make_conds(0)
    for part in ("t3", "gen"):
        for name, value in conds[part].items():
            assert (value is None and again[part][name] is None) or torch.equal(value, again[part][name])
    assert not torch.equal(rw.make_conds(1)["gen"]["embedding"], conds["gen"]["embedding"])


# --------------------------------------------------------------------------------------------------- tokenizers
def test_english_tokenizer_is_the_published_file() -> None:
    assert hashlib.sha256(rw.ENGLISH_TOKENIZER.read_bytes()).hexdigest() == ENGLISH_TOKENIZER_SHA256


@pytest.mark.skipif(not (KIT_ROOT / "tokenizers").is_dir(), reason="shared reference kit not present")
def test_synthetic_tokenizer_files_equal_the_kits() -> None:
    kit = KIT_ROOT / "tokenizers"
    tokenizer = json.loads((kit / "SYNTHETIC_grapheme_mtl_merged_expanded_v1.json").read_text(encoding="utf-8"))
    table = json.loads((kit / "SYNTHETIC_Cangjie5_TC.json").read_text(encoding="utf-8"))
    assert rw.synthetic_multilingual_tokenizer() == tokenizer
    assert rw.synthetic_cangjie_table() == table


def test_written_tokenizer_files_and_offline_cangjie_lookup(tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants, hf_hub_download
    from tokenizers import Tokenizer

    english, multilingual = tmp_path / "en", tmp_path / "mtl"
    english.mkdir()
    multilingual.mkdir()
    rw.write_tokenizer_files(LAYOUTS["english"], english)
    rw.write_tokenizer_files(LAYOUTS["multilingual"], multilingual)
    assert sorted(p.name for p in english.iterdir()) == ["tokenizer.json"]
    assert hashlib.sha256((english / "tokenizer.json").read_bytes()).hexdigest() == ENGLISH_TOKENIZER_SHA256

    mtl = Tokenizer.from_file(str(multilingual / LAYOUTS["multilingual"].text_tokenizer))
    en = Tokenizer.from_file(str(english / "tokenizer.json"))
    assert mtl.get_vocab_size() == 2454
    assert all(mtl.id_to_token(i) == en.id_to_token(i) for i in range(704))
    ids = mtl.encode("[ja]こんにちは[SPACE][cj_o][cj_.]").ids
    assert mtl.id_to_token(ids[0]) == "[ja]" and 1 not in ids  # no [UNK]
    assert [mtl.id_to_token(i) for i in ids[-2:]] == ["[cj_o]", "[cj_.]"]

    # the reference fetches the Cangjie table through the HF cache inside the checkpoint dir, offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    found = hf_hub_download(HF_REPO_ID, "Cangjie5_TC.json", cache_dir=str(multilingual))
    assert json.loads(Path(found).read_text(encoding="utf-8")) == rw.synthetic_cangjie_table()
    assert not (multilingual / rw.PARTIAL_DIR).exists()


# ------------------------------------------------------------------------------------------------------- tiny
@pytest.mark.parametrize("variant", ["english", "multilingual"])
def test_tiny_checkpoint_records_config_and_loads(variant: str, request) -> None:
    directory = request.getfixturevalue(f"{variant}_tiny_checkpoint")
    record = json.loads((directory / CONFIG_FILE).read_text())
    configs = rw.model_configs(variant, "tiny")
    assert record["format"] == 1 and record["variant"] == variant and record["size"] == "tiny" and record["seed"] == 0
    for key, config in configs.items():
        assert record[key] == json.loads(json.dumps(dataclasses.asdict(config))), key
        assert type(config).from_dict(record[key]) == config
    layout = LAYOUTS[variant]
    assert all((directory / name).is_file() for name in layout.files)
    for file, specs in rw.checkpoint_specs(variant, "tiny").items():
        state = read_state_dict(directory / file)
        # safetensors reads back in name order, .pt in insertion order: compare as sets
        assert sorted((k, tuple(v.shape), str(v.dtype)) for k, v in state.items()) == sorted(
            (s.name, tuple(s.shape), str(s.dtype)) for s in specs
        ), file
    total = sum((directory / f).stat().st_size for f in rw.checkpoint_specs(variant, "tiny"))
    assert total < 60e6, f"tiny {variant} weights are {total / 1e6:.0f} MB"


def test_tiny_checkpoint_is_deterministic(tmp_path: Path) -> None:
    first = rw.write_random_checkpoint("multilingual", "tiny", 5, tmp_path / "a")
    second = rw.write_random_checkpoint("multilingual", "tiny", 5, tmp_path / "b")
    other = rw.write_random_checkpoint("multilingual", "tiny", 6, tmp_path / "c")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix == ".pt":  # compare tensors: pickles may differ in incidental bytes
            a, b = torch.load(first / rel, weights_only=True), torch.load(second / rel, weights_only=True)
            assert json.dumps(list(a), default=str) == json.dumps(list(b), default=str)
        else:
            assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    t3 = LAYOUTS["multilingual"].t3
    assert (first / t3).read_bytes() != (other / t3).read_bytes()


def test_one_weight_file_alone_equals_that_file_of_a_complete_run(tmp_path: Path) -> None:
    """What lets the full-size test fixtures hold only the files a test reads."""
    layout = LAYOUTS["english"]
    complete = rw.write_random_checkpoint("english", "tiny", 3, tmp_path / "all")
    alone = rw.write_random_checkpoint("english", "tiny", 3, tmp_path / "t3", weights=[layout.t3])
    assert (alone / layout.t3).read_bytes() == (complete / layout.t3).read_bytes()
    assert not (alone / layout.s3gen).exists() and not (alone / layout.voice_encoder).exists()
    assert (alone / layout.conds).is_file() and (alone / layout.text_tokenizer).is_file()
    with pytest.raises(ValueError, match="not weight files"):
        rw.write_random_checkpoint("english", "tiny", 3, tmp_path / "bad", weights=["t3_mtl23ls_v2.safetensors"])


# ------------------------------------------------------------------------------------------------ corrupt files
@pytest.fixture(scope="module")
def ve_state() -> dict[str, torch.Tensor]:
    specs = rw.component_specs("voice_encoder", "english", "full")
    return dict(rw.build_state_dict(specs, 0, {}))


@pytest.mark.parametrize("name", ["ve.safetensors", "ve.pt"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_weight_file_raises_checkpoint_error_naming_it(tmp_path: Path, ve_state, name: str, damage: str):
    path = tmp_path / name
    rw._save_weights(ve_state, path)
    assert read_state_dict(path).keys() == ve_state.keys()  # intact: reads back
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x13\x37" * 4096)
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=str(path).replace(".", r"\.")):
        read_state_dict(path)


def test_written_files_get_the_usual_permissions_without_touching_the_umask(tmp_path: Path) -> None:
    """safetensors creates its files 0600; ours end with what any new file gets there (0o666 less the umask), found
    without changing the process's umask. A fresh interpreter with umask 027 writes every kind of file."""
    program = (
        "import os, stat, sys\n"
        "from pathlib import Path\n"
        "os.umask(0o027)\n"
        "from chatterbox_vllm import random_checkpoint as rw\n"
        "assert os.umask(0o027) == 0o027\n"
        "out = rw.write_random_checkpoint('english', 'tiny', 0, Path(sys.argv[1]))\n"
        "print(sorted({oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", program, str(tmp_path / "ckpt")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "['0o640']"
    assert not (tmp_path / "ckpt" / rw.PARTIAL_DIR).exists()


def test_missing_weight_file_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="ve.safetensors"):
        read_state_dict(tmp_path / "ve.safetensors")
