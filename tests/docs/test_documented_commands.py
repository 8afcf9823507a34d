"""Every command shown in README.md, QUICKSTART.md and API_USAGE.md is exercised here, or says why it cannot be.

Each shell line (continuations joined) and each Python block of the three documents must match exactly one rule in
`RULES`, and every rule must match something, so a new command in the docs fails this test until it is covered:

* `live`: run as written against a real `chatterbox-vllm serve` on the random-tiny checkpoint (the `live_server`
  fixture), in a scratch directory, with only the substitutions in `SUBSTITUTIONS` (the server's address, the
  interpreter, scratch paths). Audio files it writes must decode; JSON it prints must not be an error.
* `start-script`: `start-api-server.sh` with the documented options and variables, plus `--print-config`: the
  settings it would serve with must show every one of them (serving itself: tests/test_start_script.py).
* `ci`: the test command, which is what `.ci/run` runs.
* `offline`: cannot run in CI (the Hugging Face hub, a Docker daemon); a named check stands in for it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import yaml

from chatterbox_vllm.checkpoint.layout import LAYOUTS

REPO = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "QUICKSTART.md", "API_USAGE.md")
AUDIO_SUFFIXES = {".mp3", ".wav", ".flac", ".opus", ".aac", ".ogg", ".m4b"}
DOC_VOICE_CLIPS = ("my_voice.wav", "clip.wav")  # reference clips the docs upload; made in the scratch directory
DOC_TEXT = "# The Harbour\n\nThe boats came in at dawn.\n\n# The Market\n\nBy noon the square was quiet.\n"
DOC_TEXT_FILES = ("chapter.md",)  # texts the docs turn into long-form jobs; made in the scratch directory


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    language: str  # "shell" | "python"
    text: str  # as shown (shell: continuation lines joined)

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def words(self) -> list[str]:
        """Shell words without the trailing comment."""
        return shlex.split(self.text, comments=True)


@dataclass(frozen=True)
class Rule:
    kind: str  # live | start-script | ci | offline
    pattern: str  # searched in the command (shell: without its comment)
    why: str = ""

    def matches(self, command: Command) -> bool:
        subject = shlex.join(command.words) if command.language == "shell" else command.text
        return re.search(self.pattern, subject) is not None


RULES = (
    Rule("start-script", r"^(CHATTERBOX_\w+=\S+ )*\./start-api-server\.sh\b"),
    Rule("ci", r"^scripts/test\.sh$"),
    Rule("live", r"^curl "),
    Rule("live", r"^(bash|python) examples/"),
    Rule("live", r"^\.venv/bin/chatterbox-vllm (make-checkpoint|synthesize) "),
    Rule("live", r"from openai import OpenAI"),
    Rule("live", r"ChatterboxTTS\.from_pretrained\(\)"),
    Rule("live", r"ChatterboxTTS\.from_settings\(settings\)"),
    Rule("offline", r"^hf download ", "needs the Hugging Face hub: checked that `hf download` takes these options "
         "and that the files it names are exactly the ones the loader needs"),
    Rule("offline", r"^(CHATTERBOX_\w+=\S+ )*docker compose ", "needs a Docker daemon: docker-compose.yml is "
         "validated by tests/deploy/test_deploy_files.py; checked here that the named services and profiles exist"),
)


def documented_commands() -> list[Command]:
    """Shell lines and Python blocks of every fenced code block in the three documents."""
    commands = []
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if block.group(1) == "json":
                continue  # an example of a payload, not a command
            language = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python"}.get(block.group(1))
            assert language, f"{doc}: a code block without a known language ({block.group(1)!r})"
            first_line = text.count("\n", 0, block.start(2)) + 1
            if language == "python":
                commands.append(Command(doc, first_line, language, block.group(2)))
                continue
            pending, start = "", 0
            for offset, line in enumerate(block.group(2).splitlines()):
                if not pending:
                    start = first_line + offset
                pending += line
                if line.endswith("\\"):
                    pending = pending[:-1]
                    continue
                if pending.strip() and not pending.lstrip().startswith("#"):
                    commands.append(Command(doc, start, language, pending.strip()))
                pending = ""
    return commands


COMMANDS = documented_commands()


def rule_of(command: Command) -> Rule:
    matching = [rule for rule in RULES if rule.matches(command)]
    assert len(matching) == 1, f"{command.id}: {command.text!r} matches {len(matching)} rules, not exactly one"
    return matching[0]


def test_every_documented_command_has_exactly_one_rule() -> None:
    assert len(COMMANDS) > 20
    for command in COMMANDS:
        rule_of(command)
    for rule in RULES:
        assert any(rule.matches(c) for c in COMMANDS), f"rule {rule.pattern!r} matches no documented command"


def by_kind(kind: str) -> list:
    return [pytest.param(c, id=c.id) for c in COMMANDS if rule_of(c).kind == kind]


# --------------------------------------------------------------------------------------------- live commands
def substitutions(url: str, scratch: Path) -> list[tuple[str, str]]:
    """What changes between the docs and this machine: nothing else."""
    return [
        (r"(?:http://)?localhost:8000", url),  # the live server instead of the default port
        (r"(?<![\w/.])/tmp/", f"{scratch}/"),  # scratch space instead of /tmp
        (r"(?<![\w/])\.venv/bin/", f"{Path(sys.executable).parent}/"),  # the environment running the tests
        (r"^python ", f"{sys.executable} "),
        (r'"/models/chatterbox-multilingual"', f'"{scratch}/chatterbox-multilingual"'),  # a local directory
    ]


def apply(text: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        text = re.sub(pattern, lambda _m, r=replacement: r, text, flags=re.M)
    return text


def write_clip(path: Path, seconds: float = 3.0, rate: int = 24_000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * (150 * t + 60 * t**2)) + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    soundfile.write(path, wave.astype(np.float32), rate)


def fake_hub_cache(home: Path, repo_id: str, *sources: Path) -> None:
    """An HF_HOME whose hub cache holds `repo_id` at `main` (the random tiny files), as after a download.

    With HF_HUB_OFFLINE=1, `from_pretrained()` then takes the same huggingface_hub path as on a user's machine.
    """
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for source in sources:
        for file in source.iterdir():
            if not file.name.startswith(".") and not (snapshot / file.name).exists():
                (snapshot / file.name).symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def check_outputs(command: Command, result: subprocess.CompletedProcess, scratch: Path, before: set[Path]) -> None:
    """Audio the command wrote decodes; JSON it printed is not an error; SSE ends with its done event."""
    assert result.returncode == 0, f"{command.id}: exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    for path in sorted(set(scratch.rglob("*")) - before):
        if path.suffix in AUDIO_SUFFIXES:
            with av.open(str(path)) as container:
                frames = sum(frame.samples for frame in container.decode(audio=0))
            assert frames > 0, f"{command.id}: {path.name} holds no audio"
        elif path.suffix == ".pcm":
            assert path.stat().st_size > 0 and path.stat().st_size % 2 == 0, f"{command.id}: {path.name}"
    out = result.stdout.strip()
    if out.startswith("{"):
        assert not json.loads(out).get("error"), f"{command.id}: {out[:500]}"  # (a job's "error" is null)
    if "stream_format" in command.text:
        assert '"type": "speech.audio.done"' in out or '"type":"speech.audio.done"' in out, out[-500:]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory, english_tiny_checkpoint: Path,
            multilingual_tiny_checkpoint: Path, turbo_tiny_checkpoint: Path) -> Path:  # fmt: skip
    """One directory for all documented commands (later ones use what earlier ones made, as a reader would)."""
    root = tmp_path_factory.mktemp("docs")
    (root / "examples").symlink_to(REPO / "examples")
    for name in DOC_VOICE_CLIPS:
        write_clip(root / name)
    for name in DOC_TEXT_FILES:
        (root / name).write_text(DOC_TEXT)
    (root / "chatterbox-multilingual").symlink_to(multilingual_tiny_checkpoint)
    fake_hub_cache(root / "hf-home", "ResembleAI/chatterbox", english_tiny_checkpoint, multilingual_tiny_checkpoint)
    fake_hub_cache(root / "hf-home", "ResembleAI/chatterbox-turbo", turbo_tiny_checkpoint)
    return root


@pytest.mark.parametrize("command", by_kind("live"))
def test_live_command(command: Command, live_server: str, scratch: Path) -> None:
    rules = substitutions(live_server, scratch)
    env = {**os.environ, "BASE_URL": live_server, "OUT": str(scratch), "HF_HOME": str(scratch / "hf-home"),
           "HF_HUB_OFFLINE": "1", "CHATTERBOX_MODEL": "random-tiny", "CHATTERBOX_CACHE_DIR": str(scratch / "cache"),
           "CHATTERBOX_DEVICE": "cpu", "CHATTERBOX_ENGINE": "torch"}  # fmt: skip
    before = set(scratch.rglob("*"))
    if command.language == "python":
        code = apply(command.text, rules)
        if "from_settings" in code and "import ChatterboxTTS" not in code:
            code = "from chatterbox_vllm.tts import ChatterboxTTS\n" + code  # the docs continue the block above
        args = [sys.executable, "-c", code]
    else:
        args = ["bash", "-c", apply(command.text, rules)]
    result = subprocess.run(args, cwd=scratch, env=env, capture_output=True, text=True, timeout=600)
    check_outputs(command, result, scratch, before)


# --------------------------------------------------------------------------------------------- start script
OPTION_FIELDS = {"--preset": "preset", "--model": "model", "--extra-models": "extra_models", "--host": "host",
                 "--port": "port", "--voices-dir": "voices_dir", "--api-key": "api_key"}  # fmt: skip


@pytest.mark.parametrize("command", by_kind("start-script"))
def test_start_script_command(command: Command, tmp_path: Path) -> None:
    if not (REPO / ".venv" / "bin" / "chatterbox-vllm").exists():
        pytest.skip("start-api-server.sh would install .venv first; scripts/test.sh makes it")
    words = command.words
    script = words.index("./start-api-server.sh")
    variables = dict(word.split("=", 1) for word in words[:script])
    options = words[script + 1 :]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATTERBOX_")}
    result = subprocess.run(["bash", str(REPO / "start-api-server.sh"), *options, "--print-config"],
                            cwd=tmp_path, env={**env, **variables}, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    words_left = [w for w in options if w != "--print-config"]
    for flag, value in zip(words_left[::2], words_left[1::2], strict=True):
        field = OPTION_FIELDS[flag]
        expected = "***" if field == "api_key" else value
        actual = ",".join(config[field]) if isinstance(config[field], list) else str(config[field])
        assert actual == expected, (flag, config[field])
    for name, value in variables.items():
        field = name.removeprefix("CHATTERBOX_").lower()
        assert str(config["limits"].get(field, config.get(field))) == value, (name, config)
    if "--preset" not in options and "CHATTERBOX_PRESET" not in variables:
        assert config["preset"] in ("low", "medium", "high")  # auto: from nvidia-smi, medium without one


# --------------------------------------------------------------------------------------------- the rest
@pytest.mark.parametrize("command", by_kind("ci"))
def test_test_command_is_what_ci_runs(command: Command) -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(rf"^exec bash {re.escape(command.words[0])}$", ci, re.M), ci


@pytest.mark.parametrize("command", by_kind("offline"))
def test_offline_command(command: Command) -> None:
    words = command.words
    if words[:2] == ["hf", "download"]:
        hf = shutil.which("hf", path=str(Path(sys.executable).parent)) or "hf"
        help_text = subprocess.run([hf, "download", "--help"], capture_output=True, text=True, timeout=60).stdout
        assert "--local-dir" in help_text and "[FILENAMES]" in help_text
        assert words[2] == "ResembleAI/chatterbox"
        files = [w for w in words[3:] if not w.startswith("--")][: -1 if "--local-dir" in words else None]
        variant = "english" if "t3_cfg.safetensors" in files else "multilingual"
        assert sorted(files) == sorted(LAYOUTS[variant].files), files
        return
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    rest = words[words.index("compose") + 1 :]
    for flag, value in zip(rest, rest[1:]):
        if flag == "--profile":
            assert value in profiles, value
    if "logs" in rest:
        assert rest[-1] in services, rest
    assert any(w in rest for w in ("up", "logs")), rest


def test_rules_cover_documents_as_written() -> None:
    """The scratch files the live commands rely on are the ones the documents name."""
    shown = " ".join(c.text for c in COMMANDS)
    for name in DOC_VOICE_CLIPS:
        assert f"@{name}" in shown or f" {name} " in shown, name
