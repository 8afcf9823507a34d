"""S3Gen in a worker process of its own (CHATTERBOX_S3GEN_LAYOUT=process), on the tiny English checkpoint (CPU).

First `S3GenProcess` alone over a `Vocoder` loaded without T3 (no engine): the child's results are the in-process
ones, voices cross once (again after the child's cache let them go), a SIGKILLed child is replaced and its pieces
resent, a piece whose second child dies too fails with a clear error, and a child whose parent is killed exits.
Then over real HTTP, one vLLM engine shared by a thread-layout and a process-layout server: the same audio for the
same seed, streaming, batching across requests, a SIGKILL mid-request, /health's details and a clean shutdown; and
`chatterbox-vllm serve` itself, stopped by SIGTERM, leaves no S3Gen process behind.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydantic
import pytest
import torch
from prometheus_client import REGISTRY

from chatterbox_vllm.conditioning import Conditionals
from chatterbox_vllm.incremental import IncrementalVocoder, PartialResult, vocode_partials
from chatterbox_vllm.server import s3gen_process
from chatterbox_vllm.server.s3gen_process import S3GenProcess, S3GenProcessError, WarmUp
from chatterbox_vllm.server.s3gen_worker import S3GenWorker
from chatterbox_vllm.settings import Settings
from chatterbox_vllm.tts import ChatterboxTTS
from chatterbox_vllm.vocoder import S3GenOptions, Vocoder, VocoderSpec, VocodeJob
from chatterbox_vllm.vram_plan import S3GEN_PROCESS_GIB, model_need

from server_utils import Server, decode, make_settings, start_server, stop_server
from support.processes import free_port, server_process

SENTENCES = "Hello there, this is the first sentence. And here comes a second one, a little longer than the first."


def relative_distance(got: np.ndarray, want: np.ndarray) -> float:
    """rms of the difference over the rms of `want` (the signal's own scale); lengths must agree."""
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.sqrt(np.mean(want.astype(np.float64) ** 2)))
    assert scale > 0
    return float(np.sqrt(np.mean((got.astype(np.float64) - want) ** 2))) / scale


def alive(pid: int) -> bool:
    """Whether a process of this pid exists and is not a zombie (an exited child not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(condition, timeout_s: float = 120, step_s: float = 0.01) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step_s)


# --------------------------------------------------------------------------------- S3GenProcess alone
@pytest.fixture(scope="module")
def spec(english_tiny_checkpoint: Path) -> VocoderSpec:
    return VocoderSpec(str(english_tiny_checkpoint), "cpu", S3GenOptions())


@pytest.fixture(scope="module")
def vocoder(spec: VocoderSpec) -> Vocoder:
    """S3Gen loaded as the child loads it: no T3, no vLLM, no speech tokenizer."""
    loaded = Vocoder.load(spec)
    assert loaded.s3gen.tokenizer is None and loaded.default_conds is not None
    return loaded


def other_voice(conds: Conditionals) -> Conditionals:
    """A second voice for S3Gen: a shorter prompt and another x-vector (a tensor of its own: another voice id)."""
    gen = dict(conds.gen)
    gen["prompt_token"] = gen["prompt_token"][:, :80].clone()
    gen["prompt_token_len"] = torch.tensor([80])
    gen["prompt_feat"] = gen["prompt_feat"][:, :160].clone()
    gen["embedding"] = -gen["embedding"].clone()
    return dataclasses.replace(conds, gen=gen)


def start(spec: VocoderSpec, vocoder: Vocoder, **kwargs) -> S3GenProcess:
    process = S3GenProcess(spec, 8, warm_up=WarmUp(40), call_worker=S3GenWorker(vocoder, 1), **kwargs)
    process.ready.result(timeout=300)
    return process


def test_vocoder_is_what_the_model_vocodes_with(english_tiny_checkpoint: Path, vocoder: Vocoder) -> None:
    """ChatterboxTTS delegates to its Vocoder; one loaded alone gives the same waveform."""
    from chatterbox_vllm.checkpoint.config import load_model_config
    from chatterbox_vllm.checkpoint.hub import resolve_model
    from chatterbox_vllm.vocoder import load_s3gen_for

    directory, layout = resolve_model(str(english_tiny_checkpoint))
    s3gen = load_s3gen_for(directory, layout, load_model_config(directory, layout), torch.device("cpu"),
                           S3GenOptions(), graphs=False)  # fmt: skip
    whole = Vocoder(s3gen, device=torch.device("cpu"), family=layout.family)
    tokens = list(range(200, 230))
    want = whole.vocode(tokens, vocoder.default_conds, seed=3)
    assert relative_distance(vocoder.vocode(tokens, vocoder.default_conds, seed=3), want) < 1e-5


def test_the_child_vocodes_as_in_process_and_voices_cross_once(
    spec: VocoderSpec, vocoder: Vocoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    real_send = s3gen_process._send
    monkeypatch.setattr(s3gen_process, "_send", lambda conn, message: (sent.append(message[0]), real_send(conn, message)))
    builtin, second = vocoder.default_conds, other_voice(vocoder.default_conds)
    jobs = [VocodeJob(list(range(100, 100 + n)), conds, seed=n) for n, conds in
            [(30, builtin), (22, second), (26, builtin), (18, second)]]  # fmt: skip
    streams = [IncrementalVocoder(vocoder, conds, max_tokens=40, seed=s) for s, conds in [(7, builtin), (8, second)]]
    partials = [stream.partial_job(list(range(300, 312))) for stream in streams]
    process = start(spec, vocoder)
    try:
        futures = [process.vocode(job) for job in jobs] + [process.partial(job) for job in partials]
        results = [future.result(timeout=300) for future in futures]
        for job, wav in zip(jobs, results):
            assert wav.dtype == np.float32
            assert relative_distance(wav, vocoder.vocode(job.tokens, job.conds, seed=job.seed)) < 1e-3
        for job, result in zip(partials, results[len(jobs):]):
            assert isinstance(result, PartialResult)
            want = vocode_partials(vocoder, [job])[0]
            assert relative_distance(result.wav, want.wav) < 1e-3
            assert relative_distance(result.mel.numpy(), want.mel.numpy()) < 1e-3
        assert sent.count("voice") == 2  # each voice's tensors once, for six pieces
        assert process.health() == {"layout": "process", "pid": process.pid, "alive": True, "restarts": 0}
    finally:
        process.shutdown()


def test_the_child_hears_of_requests_in_progress(spec: VocoderSpec, vocoder: Vocoder) -> None:
    """`note_requests` crosses the pipe: the child's job batch waits between flow steps while the server has a
    request in progress, serves that request's piece meanwhile, and goes on once the count is back to 0."""
    job_piece = VocodeJob(list(range(100, 140)), vocoder.default_conds, seed=3)
    request_piece = VocodeJob(list(range(200, 220)), vocoder.default_conds, seed=4)
    process = start(spec, vocoder, max_pause_s=120)
    try:
        started = time.perf_counter()
        process.vocode(job_piece, low_priority=True).result(timeout=300)
        alone_s = time.perf_counter() - started
        process.note_requests(1)
        job = process.vocode(job_piece, low_priority=True)
        time.sleep(max(1.5, 3 * alone_s))
        assert not job.done()
        wav = process.vocode(request_piece).result(timeout=300)
        assert not job.done()
        process.note_requests(0)
        job_wav = job.result(timeout=300)
    finally:
        process.shutdown()
    assert relative_distance(wav, vocoder.vocode(request_piece.tokens, request_piece.conds, seed=4)) < 1e-3
    assert relative_distance(job_wav, vocoder.vocode(job_piece.tokens, job_piece.conds, seed=3)) < 1e-3


def test_a_voice_the_child_let_go_is_sent_again(spec: VocoderSpec, vocoder: Vocoder) -> None:
    builtin, second = vocoder.default_conds, other_voice(vocoder.default_conds)
    process = start(spec, vocoder, voice_cache=1)
    try:
        for conds in (builtin, second, builtin):  # one voice kept: each piece's voice crosses again
            job = VocodeJob(list(range(100, 120)), conds, seed=1)
            wav = process.vocode(job).result(timeout=300)
            assert relative_distance(wav, vocoder.vocode(job.tokens, conds, seed=1)) < 1e-3
    finally:
        process.shutdown()


def test_a_killed_child_is_replaced_and_a_piece_it_killed_twice_fails(spec: VocoderSpec, vocoder: Vocoder) -> None:
    before = REGISTRY.get_sample_value("chatterbox_s3gen_process_restarts_total", {"model": "t"}) or 0.0
    process = start(spec, vocoder, model="t")
    jobs = [VocodeJob(list(range(100, 140)), vocoder.default_conds, seed=i) for i in range(4)]
    try:
        first_pid = process.pid
        futures = [process.vocode(job) for job in jobs]
        os.kill(first_pid, signal.SIGKILL)
        for job, future in zip(jobs, futures):  # resent to the next child: nothing accepted is lost
            assert relative_distance(future.result(timeout=300), vocoder.vocode(job.tokens, job.conds, seed=job.seed)) < 1e-3
        assert process.restarts == 1 and process.pid != first_pid and not alive(first_pid)
        after = REGISTRY.get_sample_value("chatterbox_s3gen_process_restarts_total", {"model": "t"})
        assert after == before + 1

        futures = [process.vocode(job) for job in jobs]
        os.kill(process.pid, signal.SIGKILL)
        wait_until(lambda: process.restarts == 2 and process._child_ready)  # its pieces are in the new child now
        os.kill(process.pid, signal.SIGKILL)  # ... which dies too: their second try
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=300))
            except S3GenProcessError as exc:
                assert "died twice" in str(exc)
                outcomes.append(exc)
        assert any(isinstance(outcome, S3GenProcessError) for outcome in outcomes)
        # and the third child serves
        assert len(process.vocode(jobs[0]).result(timeout=300)) > 0
        assert process.restarts == 3
    finally:
        process.shutdown()
    assert not alive(process.pid)


CHILD_OF_A_KILLED_PARENT = """
import sys, time
from chatterbox_vllm.server.s3gen_process import S3GenProcess, WarmUp
from chatterbox_vllm.server.s3gen_worker import S3GenWorker
from chatterbox_vllm.vocoder import Vocoder, VocoderSpec

if __name__ == "__main__":
    spec = VocoderSpec(sys.argv[1], "cpu")
    process = S3GenProcess(spec, 4, warm_up=WarmUp(10), call_worker=S3GenWorker(Vocoder.load(spec), 1))
    process.ready.result(timeout=300)
    print(process.pid, flush=True)
    time.sleep(600)
"""


def test_the_child_of_a_killed_server_exits(english_tiny_checkpoint: Path, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(CHILD_OF_A_KILLED_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(english_tiny_checkpoint)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()  # no shutdown, no exit handlers: the child sees its pipe close
        parent.wait(30)
        wait_until(lambda: not alive(child), timeout_s=60, step_s=0.1)
    finally:
        parent.kill()


# ------------------------------------------------------------------------------------------ settings
def test_the_layout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().s3gen_layout == "auto"
    # auto: a worker process only on a GPU with the high preset (measured there); a thread elsewhere
    assert Settings(preset="high").s3gen_layout_on("cuda") == "process"
    assert Settings(preset="high").s3gen_layout_on("cpu") == "thread"
    assert Settings(preset="medium").s3gen_layout_on("cuda") == "thread"
    assert Settings(preset="low").s3gen_layout_on("cuda") == "thread"
    assert Settings(preset="high", s3gen_layout="thread").s3gen_layout_on("cuda") == "thread"
    assert Settings(preset="low", s3gen_layout="process").s3gen_layout_on("cpu") == "process"
    monkeypatch.setenv("CHATTERBOX_S3GEN_LAYOUT", "process")
    assert Settings().s3gen_layout == "process"
    monkeypatch.setenv("CHATTERBOX_S3GEN_LAYOUT", "fibre")
    with pytest.raises(pydantic.ValidationError, match="s3gen_layout"):
        Settings()
    with pytest.raises(pydantic.ValidationError, match="'auto', 'thread' or 'process'"):
        Settings(s3gen_layout="processes")


def test_the_vram_plan_counts_the_process() -> None:
    thread = model_need("english", "english", "high", 3072)
    process = model_need("english", "english", "high", 3072, "process")
    assert process.pipeline_gib == pytest.approx(thread.pipeline_gib + S3GEN_PROCESS_GIB)
    assert process.min_t3_gib == thread.min_t3_gib


# ------------------------------------------------------------------------------------------ over HTTP
@pytest.fixture(scope="module")
def servers(english_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """The same model and settings served twice: S3Gen on a thread, and in a process of its own."""
    common = {"chunk_chars": 60}  # SENTENCES are two pieces
    thread = start_server(make_settings(tmp_path_factory.mktemp("thread"), **common), english_tts)
    process = start_server(make_settings(tmp_path_factory.mktemp("process"), s3gen_layout="process", **common),
                           english_tts)  # fmt: skip
    wait_until(lambda: httpx.get(f"{process.url}/health").status_code == 200, timeout_s=300, step_s=0.2)
    yield thread, process
    stop_server(process)
    stop_server(thread)


def speech(server: Server, seed: int) -> tuple[np.ndarray, int]:
    """The audio of SENTENCES at `seed` (pcm, streamed as it is made), and how many chunks it came in."""
    chunks = []
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=600, json={
        "model": "tts-1", "input": SENTENCES, "voice": "alloy", "response_format": "pcm", "seed": seed,
    }) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        chunks = [chunk for chunk in response.iter_bytes() if chunk]
    return decode(b"".join(chunks), "pcm")[0], len(chunks)


def s3gen_health(server: Server) -> dict:
    return httpx.get(f"{server.url}/health").json()["models"][0]["s3gen"]


def test_the_process_layout_speaks_as_the_thread_layout(servers: tuple[Server, Server]) -> None:
    thread, process = servers
    assert "s3gen" not in httpx.get(f"{thread.url}/health").json()["models"][0]  # the thread layout's entry as before
    health = s3gen_health(process)
    assert health["layout"] == "process" and health["alive"] and health["restarts"] == 0
    assert health["pid"] != os.getpid() and alive(health["pid"])
    for seed in (0, 1):
        want, _ = speech(thread, seed)
        got, chunks = speech(process, seed)
        assert relative_distance(got, want) < 5e-3
        assert chunks > 1  # streamed: the first piece's audio before the second piece's
    phases = httpx.get(f"{process.url}/health").json()["models"][0]["startup_phases_s"]
    assert "s3gen_process_load" in phases


def test_concurrent_requests_batch_in_the_process(servers: tuple[Server, Server]) -> None:
    _, process = servers

    def batches() -> tuple[float, float]:
        return (REGISTRY.get_sample_value("chatterbox_s3gen_batch_size_count") or 0.0,
                REGISTRY.get_sample_value("chatterbox_s3gen_batch_size_sum") or 0.0)  # fmt: skip

    count, rows = batches()
    results: list[np.ndarray | None] = [None] * 6
    start = threading.Barrier(len(results))

    def client(index: int) -> None:
        start.wait()
        results[index] = speech(process, 10 + index)[0]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result is not None and len(result) for result in results)
    new_count, new_rows = batches()  # recorded in this (the server's) registry from the child's reports
    assert new_count > count
    assert new_rows - rows > new_count - count  # some batch held more than one piece


def test_a_killed_process_mid_request_is_restarted_and_the_request_succeeds(servers: tuple[Server, Server]) -> None:
    thread, process = servers
    want, _ = speech(thread, 5)
    s3gen = process.app.state.model.require_ready().synthesizer._s3gen
    before = s3gen_health(process)
    result: dict[str, np.ndarray] = {}
    client = threading.Thread(target=lambda: result.setdefault("audio", speech(process, 5)[0]))
    client.start()
    wait_until(lambda: len(s3gen._inflight) > 0)  # a piece of the request is in the child
    os.kill(before["pid"], signal.SIGKILL)
    client.join(600)
    assert relative_distance(result["audio"], want) < 5e-3
    after = s3gen_health(process)
    assert after["restarts"] == before["restarts"] + 1 and after["pid"] != before["pid"] and after["alive"]
    assert not alive(before["pid"])
    metrics = httpx.get(f"{process.url}/metrics").text
    assert 'chatterbox_s3gen_process_restarts_total{model="chatterbox-english"}' in metrics


def test_shutdown_leaves_no_process(english_tts: ChatterboxTTS, tmp_path: Path) -> None:
    running = start_server(make_settings(tmp_path, s3gen_layout="process"), english_tts)
    wait_until(lambda: httpx.get(f"{running.url}/health").status_code == 200, timeout_s=300, step_s=0.2)
    pid = s3gen_health(running)["pid"]
    assert alive(pid)
    stop_server(running)
    assert not alive(pid)


def test_sigterm_stops_the_servers_s3gen_process(tmp_path: Path) -> None:
    """`chatterbox-vllm serve` as users start it, S3Gen in its process (started beside vLLM's engine); SIGTERM leaves
    no process behind."""
    port = free_port()
    env = {**os.environ, "CHATTERBOX_MODEL": "random-tiny", "CHATTERBOX_S3GEN_LAYOUT": "process",
           "CHATTERBOX_CACHE_DIR": str(tmp_path / "cache"), "CHATTERBOX_MAX_NEW_TOKENS": "40",
           "CHATTERBOX_MAX_MODEL_LEN": "512", "CHATTERBOX_HOST": "127.0.0.1", "CHATTERBOX_PORT": str(port),
           "CHATTERBOX_VOICES_DIR": str(tmp_path / "voices")}  # fmt: skip
    args = [sys.executable, "-m", "chatterbox_vllm.cli", "serve"]
    with server_process(args, env, port, tmp_path / "server.log") as (url, server):
        pid = httpx.get(f"{url}/health").json()["models"][0]["s3gen"]["pid"]
        assert alive(pid)
        # started while vLLM's engine started (a CPU: its KV cache needs no fixing), not once it was up
        log_text = (tmp_path / "server.log").read_text()
        assert log_text.index("S3Gen process started beside the T3 engine") < log_text.index(" Chatterbox from ")
        response = httpx.post(f"{url}/v1/audio/speech", timeout=300,
                              json={"model": "tts-1", "input": "Hello.", "voice": "alloy", "response_format": "pcm"})  # fmt: skip
        assert response.status_code == 200 and len(response.content) > 0
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0, (tmp_path / "server.log").read_text()[-3000:]
    wait_until(lambda: not alive(pid), timeout_s=30, step_s=0.1)
