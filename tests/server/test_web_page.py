"""The web page at `/`, end to end in headless Chromium against a live server on the tiny English checkpoint.

Debian's chromium (/usr/bin/chromium; .ci/run installs it) is driven by playwright's Python package. Without either
the browser tests fail rather than skip, so CI cannot pass them silently; CHATTERBOX_SKIP_BROWSER_TESTS=1 skips
them on a machine that has no browser on purpose. Every test leaves a full-page screenshot in
.cache/artifacts/web/<test name>.png, taken after the test whether it passed or not (and some of the states on the
way, as <test name>-<state>.png).

The /v1/audio/languages checks at the end need no browser.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from chatterbox_vllm import families
from chatterbox_vllm.server.app import create_app
from chatterbox_vllm.server.registry import ModelRegistry, ServedModel
from chatterbox_vllm.settings import Settings
from chatterbox_vllm.text.languages import SUPPORTED_LANGUAGES
from chatterbox_vllm.tts import ChatterboxTTS

from server_utils import Server, make_settings, start_server, stop_server

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / ".cache" / "artifacts" / "web"
CHROMIUM = Path(os.environ.get("CHATTERBOX_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip  (Web Audio and <audio> need no fake devices headless: they play to a silent sink)
KEY = "sk-web"
SAMPLE_RATE = 24000
MAX_NEW_TOKENS = 16  # short speech: each synthesis takes a moment on the CPU
READY_MS = 60_000
SPEECH_MS = 180_000
WAIT_MS = 30_000

PHASE = "document.getElementById('result').dataset.state"
# Waits are functions, not expressions: playwright evaluates an expression with eval() at every poll, which the
# page's Content-Security-Policy (no 'unsafe-eval') refuses.
FINISHED = f"() => ['done', 'error', 'stopped'].includes({PHASE})"
READY = "() => document.body.dataset.ready === 'true'"
PLAYABLE = """() => {
    const audio = document.getElementById('player');
    return audio.src.startsWith('blob:') && audio.readyState >= 1 && audio.duration > 0;
}"""


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if os.environ.get("CHATTERBOX_SKIP_BROWSER_TESTS") == "1":
        pytest.skip("CHATTERBOX_SKIP_BROWSER_TESTS=1")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"playwright is not installed (pip install -e '.[test]'): {exc}")
    if not CHROMIUM.is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=READY_MS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def web_server(english_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(make_settings(tmp_path_factory.mktemp("web"), max_new_tokens=MAX_NEW_TOKENS), english_tts)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def keyed_web_server(english_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = make_settings(tmp_path_factory.mktemp("web-keyed"), max_new_tokens=MAX_NEW_TOKENS, api_key=KEY)
    running = start_server(settings, english_tts)
    yield running
    stop_server(running)


class Page:
    """A browser page on one server, with what it sent and what went wrong in it."""

    def __init__(self, page, server: Server, name: str) -> None:
        self.page = page
        self.server = server
        self.name = name
        self.page_errors: list[str] = []
        self.requests: list[dict] = []
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("request", self._sent)

    def _sent(self, request) -> None:
        if request.url.startswith(self.server.url):
            body = request.post_data
            self.requests.append({
                "method": request.method, "path": request.url[len(self.server.url):],
                "authorization": request.headers.get("authorization"),
                "json": json.loads(body) if body and request.method == "POST" and body.startswith("{") else None,
            })  # fmt: skip

    def snap(self, label: str = "") -> None:
        """A full-page screenshot: .cache/artifacts/web/<test name>[-label].png."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{self.name}{'-' + label if label else ''}.png"), full_page=True)

    def sent(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    def open(self):
        response = self.page.goto(self.server.url + "/", timeout=READY_MS)
        self.page.wait_for_function(READY, timeout=READY_MS)
        return response

    def speak(self, text: str = "Hello from the web page.", *, seed: int | None = 7, fmt: str = "wav") -> str:
        """Fill the form, press Speak and wait until the page is done (or failed); the final phase."""
        self.page.fill("#text", text)
        self.page.fill("#seed", "" if seed is None else str(seed))
        self.page.select_option("#format", fmt)
        self.page.click("#speak")
        return self.wait_finished()

    def wait_finished(self) -> str:
        self.page.wait_for_function(FINISHED, timeout=SPEECH_MS)
        return self.page.evaluate(PHASE)

    def state(self) -> dict:
        return self.page.evaluate("() => ({...window.chatterboxPage})")

    def error(self) -> str:
        error = self.page.locator("#error")
        error.wait_for(state="visible", timeout=WAIT_MS)
        return error.inner_text()

    def audio(self) -> dict:
        """The <audio> element once the browser has read its source's metadata."""
        self.page.wait_for_function(PLAYABLE, timeout=WAIT_MS)
        return self.page.evaluate(
            """() => {
                const audio = document.getElementById('player');
                return {src: audio.src, duration: audio.duration, readyState: audio.readyState,
                        type: window.chatterboxPage.audioType, error: audio.error && audio.error.code};
            }"""
        )


@pytest.fixture
def open_page(browser, request: pytest.FixtureRequest) -> Iterator:
    """`open_page(server)`: a fresh browser context (empty localStorage) on `server`'s page; a screenshot of it is
    saved after the test, and an uncaught error in the page's script fails the test."""
    contexts, pages = [], []
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")

    def open_on(server: Server, width: int = 1000, height: int = 1200) -> Page:
        context = browser.new_context(accept_downloads=True, viewport={"width": width, "height": height})
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = Page(context.new_page(), server, f"{name}-{len(pages) + 1}" if pages else name)
        pages.append(page)
        return page

    yield open_on
    for page in pages:
        with contextlib.suppress(Exception):  # a page that broke must not hide the test's own failure
            page.snap()
    for context in contexts:
        context.close()
    errors = [e for page in pages for e in page.page_errors]
    assert not errors, f"uncaught errors in the page: {errors}"


def _voice_clip(path: Path, seconds: float = 3.0, rate: int = 16_000) -> Path:
    """A voice-like clip: a 150 Hz tone with harmonics and a slow wobble, written as 16-bit WAV."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 150 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 1.5 * t) ** 2)
    soundfile.write(path, (0.25 * wave).astype(np.float32), rate, subtype="PCM_16")
    return path


# ------------------------------------------------------------------------------------------------ the page
def test_the_page_loads_and_lists_voices_and_languages(open_page, web_server: Server) -> None:
    web = open_page(web_server)
    response = web.open()
    assert response.status == 200 and response.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page = web.page
    voices = page.eval_on_selector_all("#voice option", "options => options.map(o => o.value)")
    assert {"default", "alloy", "nova"} <= set(voices)
    assert page.input_value("#voice") == "default"
    labels = dict(page.eval_on_selector_all("#voice option", "options => options.map(o => [o.value, o.text])"))
    assert (labels["default"], labels["alloy"]) == ("Default (built-in voice)", "Alloy")  # no id said twice
    languages = page.eval_on_selector_all("#language option", "options => options.map(o => o.value)")
    assert languages == ["en"] and page.is_disabled("#language")  # the English model speaks English only
    assert web.state()["variant"] == "english"
    assert page.inner_text("#server-status") == "Ready: the English model."

    page.fill("#text", "")
    assert page.inner_text("#char-count") == "0 / 4096 characters"
    page.type("#text", "Hi, you.")
    assert page.inner_text("#char-count") == "8 / 4096 characters"
    page.fill("#text", "x" * 4097)
    assert "(too long)" in page.inner_text("#char-count")
    assert page.get_attribute("#text", "aria-invalid") == "true"

    page.fill("#speed", "1.5")
    assert page.inner_text("#speed-value") == "1.5"
    page.click("#reset")
    assert page.input_value("#speed") == "1" and page.inner_text("#speed-value") == "1"

    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button, audio')]
              .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
              .map(e => e.id)"""
    )
    assert unlabelled == []
    ids = ["text", "voice", "language", "format", "seed", "speed", "exaggeration", "cfg-weight", "temperature",
           "speak", "stop", "player", "download", "error", "clone-name", "clone-file", "clone-consent",
           "clone-submit", "api-key"]  # fmt: skip
    assert all(page.locator(f"#{i}").count() == 1 for i in ids)
    assert page.get_attribute("#error", "role") == "alert"
    assert page.get_attribute("#clone-file", "accept") == "audio/*"
    assert web.sent("POST", "/v1/audio/speech") == []  # loading the page speaks nothing


def test_speech_plays_while_it_streams_and_ends_as_a_playable_wav(open_page, web_server: Server) -> None:
    web = open_page(web_server)
    web.open()
    assert web.speak("Hello from the web page.", seed=11, fmt="wav") == "done", web.page.inner_text("#error")
    state = web.state()
    assert state["playback"] == "webaudio"
    assert state["scheduledChunks"] >= 1 and state["receivedBytes"] > 0
    assert state["scheduledSeconds"] == pytest.approx(state["receivedBytes"] / 2 / SAMPLE_RATE, abs=1e-3)
    assert web.page.get_attribute("#result", "data-scheduled-chunks") == str(state["scheduledChunks"])
    (sent,) = web.sent("POST", "/v1/audio/speech")  # WAV is built in the page from the streamed PCM
    body = sent["json"]
    assert body["response_format"] == "pcm" and body["seed"] == 11 and body["voice"] == "default"
    assert body["input"] == "Hello from the web page." and body["model"] == "tts-1"
    assert (body["speed"], body["exaggeration"], body["cfg_weight"], body["temperature"]) == (1, 0.5, 0.5, 0.8)
    assert "language_id" not in body

    audio = web.audio()
    assert audio["type"] == "audio/wav" and audio["error"] is None
    seconds = (state["receivedBytes"] // 2) / SAMPLE_RATE
    assert audio["duration"] == pytest.approx(seconds, abs=0.05)
    assert web.page.locator("#download").is_visible()
    with web.page.expect_download(timeout=WAIT_MS) as download:
        web.page.click("#download")
    name = download.value.suggested_filename
    assert re.fullmatch(r"chatterbox-default-\d{8}-\d{6}\.wav", name), name
    samples, rate = soundfile.read(download.value.path(), dtype="int16")
    assert rate == SAMPLE_RATE and len(samples) == state["receivedBytes"] // 2 and np.abs(samples).max() > 0
    assert "done" in web.page.inner_text("#speak-status").lower()
    assert web.page.locator("#error").is_hidden()


@pytest.mark.parametrize("fmt", ["mp3", "pcm"])
def test_other_formats_are_downloadable_and_the_audio_element_plays(open_page, web_server: Server, fmt: str) -> None:
    """MP3 (and FLAC, Opus, AAC) come from a second request with the same seed; PCM downloads the raw stream
    while the element plays it as WAV."""
    web = open_page(web_server)
    web.open()
    web.page.fill("#speed", "1.25")
    assert web.speak("Formats are chosen here.", seed=5, fmt=fmt) == "done", web.page.inner_text("#error")
    state = web.state()
    assert state["scheduledChunks"] >= 1
    sent = [r["json"] for r in web.sent("POST", "/v1/audio/speech")]
    expected = ["pcm", "mp3"] if fmt == "mp3" else ["pcm"]
    assert [b["response_format"] for b in sent] == expected
    assert all(b["seed"] == 5 and b["speed"] == 1.25 for b in sent)
    audio = web.audio()
    assert audio["type"] == ("audio/mpeg" if fmt == "mp3" else "audio/wav")
    assert audio["duration"] > 0
    with web.page.expect_download(timeout=WAIT_MS) as download:
        web.page.click("#download")
    assert download.value.suggested_filename.endswith(f".{fmt}")
    data = Path(download.value.path()).read_bytes()
    if fmt == "pcm":
        assert len(data) == state["receivedBytes"] // 2 * 2 and not data.startswith(b"RIFF")
    else:
        assert data[:3] == b"ID3" or data[0] == 0xFF  # an MP3 frame or tag


# Splits every speech response body into pieces of 101, 303, 202, 707, 505 and 404 bytes (odd and even sizes), so
# samples straddle the pieces as they can over a real network.
RECHUNK_SCRIPT = """
(() => {
  const realFetch = window.fetch.bind(window);
  window.__rechunkedPieces = 0;
  window.fetch = async (...args) => {
    const response = await realFetch(...args);
    if (!String(args[0]).includes('/v1/audio/speech') || !response.ok || !response.body) return response;
    const reader = response.body.getReader();
    const sizes = [101, 303, 202, 707, 505, 404];
    let next = 0;
    const body = new ReadableStream({
      async pull(controller) {
        const {done, value} = await reader.read();
        if (done) { controller.close(); return; }
        for (let at = 0; at < value.length; next += 1) {
          const size = sizes[next % sizes.length];
          controller.enqueue(value.slice(at, at + size));
          window.__rechunkedPieces += 1;
          at += size;
        }
      },
    });
    return new Response(body, {status: response.status, statusText: response.statusText, headers: response.headers});
  };
})();
"""


def test_samples_split_across_network_chunks_are_played_and_kept_whole(open_page, web_server: Server) -> None:
    web = open_page(web_server)
    web.page.add_init_script(RECHUNK_SCRIPT)
    web.open()
    text = "Every sample arrives, whatever the chunks."
    assert web.speak(text, seed=21, fmt="wav") == "done", web.page.inner_text("#error")
    state = web.state()
    pieces = web.page.evaluate("window.__rechunkedPieces")
    assert pieces > 3 and state["scheduledChunks"] >= pieces - 1  # played piece by piece, as they came
    (sent,) = web.sent("POST", "/v1/audio/speech")
    direct = httpx.post(f"{web_server.url}/v1/audio/speech", json=sent["json"], timeout=120)
    assert direct.status_code == 200
    with web.page.expect_download(timeout=WAIT_MS) as download:
        web.page.click("#download")
    samples, rate = soundfile.read(download.value.path(), dtype="int16")
    assert rate == SAMPLE_RATE and len(direct.content) % 2 == 0
    # The same request (same seed) straight from the server: the page kept every sample, in order.
    assert samples.tobytes() == direct.content


def test_a_cloned_voice_is_listed_selected_and_speaks(open_page, web_server: Server, tmp_path: Path) -> None:
    web = open_page(web_server)
    web.open()
    page = web.page
    page.fill("#clone-name", "Web Clone")
    page.set_input_files("#clone-file", str(_voice_clip(tmp_path / "my clip.wav")))
    page.check("#clone-consent")
    page.click("#clone-submit")
    page.wait_for_function("() => document.getElementById('clone-status').textContent.startsWith('Added')",
                           timeout=SPEECH_MS)  # fmt: skip
    assert page.locator("#error").is_hidden()
    assert len(web.sent("POST", "/v1/audio/voices")) == 1
    listed = httpx.get(f"{web_server.url}/v1/audio/voices").json()["voices"]
    (voice,) = [v for v in listed if v["name"] == "Web Clone"]
    assert page.input_value("#voice") == voice["id"]
    label = page.eval_on_selector("#voice", "select => select.selectedOptions[0].textContent")
    assert "Web Clone" in label
    assert page.input_value("#clone-name") == "" and not page.is_checked("#clone-consent")  # the form was reset

    assert web.speak("Now in the cloned voice.", seed=3) == "done", page.inner_text("#error")
    assert web.sent("POST", "/v1/audio/speech")[-1]["json"]["voice"] == voice["id"]
    assert web.audio()["duration"] > 0
    assert web.page.get_attribute("#download", "download").startswith(f"chatterbox-{voice['id']}-")


def test_empty_text_shows_an_error_and_sends_nothing(open_page, web_server: Server) -> None:
    web = open_page(web_server)
    web.open()
    web.page.fill("#text", "   \n ")
    assert web.page.inner_text("#char-count") == "5 / 4096 characters"
    web.page.click("#speak")
    assert "Type some text" in web.error()
    assert web.page.evaluate(PHASE) == "idle"  # nothing started
    assert web.sent("POST", "/v1/audio/speech") == []
    assert web.page.evaluate("document.getElementById('player').getAttribute('src')") is None


def test_api_and_network_errors_are_shown_in_plain_words(open_page, web_server: Server, tmp_path: Path) -> None:
    web = open_page(web_server)
    web.open()
    page = web.page

    # Without consent the browser's own check stops the form: nothing is uploaded.
    page.fill("#clone-name", "No Consent")
    page.set_input_files("#clone-file", str(_voice_clip(tmp_path / "clip.wav")))
    page.click("#clone-submit")
    assert page.evaluate("document.getElementById('clone-consent').validity.valueMissing") is True
    assert web.sent("POST", "/v1/audio/voices") == []

    # A file that is not audio: the API's 400, its message as the server wrote it.
    notes = tmp_path / "notes.wav"
    notes.write_bytes(b"these are my notes, not a recording\n" * 50)
    page.set_input_files("#clone-file", str(notes))
    page.check("#clone-consent")
    page.click("#clone-submit")
    page.wait_for_function("() => document.getElementById('clone-status').textContent.includes('not added')",
                           timeout=WAIT_MS)  # fmt: skip
    message = web.error()
    assert message == ("Could not add the voice: notes.wav is not audio this server can read; send a WAV, MP3, FLAC "
                       "or OGG (Vorbis or Opus) file")
    assert "{" not in message  # words, not JSON
    assert len(web.sent("POST", "/v1/audio/voices")) == 1
    web.snap("upload-error")

    # The server out of reach: a network failure, said so.
    page.route("**/v1/audio/speech", lambda route: route.abort("connectionrefused"))
    assert web.speak("Nobody is listening.") == "error"
    assert "Could not reach the server" in web.error()
    web.snap("network-error")
    page.unroute("**/v1/audio/speech")

    # And an error in the body of a speech answer (what a 503 or 429 would look like).
    page.route("**/v1/audio/speech", lambda route: route.fulfill(
        status=429, content_type="application/json", headers={"Retry-After": "1"},
        body=json.dumps({"error": {"message": "the server is busy: 64 speech requests are in progress",
                                   "type": "rate_limit_error", "param": None, "code": "server_busy"}}),
    ))  # fmt: skip
    assert web.speak("Too busy.") == "error"
    assert web.error() == "Speech failed: the server is busy: 64 speech requests are in progress"
    page.unroute("**/v1/audio/speech")

    # The error goes away with the next request that works.
    assert web.speak("All is well again.") == "done"
    assert page.locator("#error").is_hidden()


def _text_fits(page, selector: str) -> dict:
    """Whether a select's chosen text fits inside it (a select clips its text without scrolling, so the text is
    measured in a span with the select's font), with both widths."""
    return page.evaluate(
        """(selector) => {
            const select = document.querySelector(selector);
            const style = getComputedStyle(select);
            const probe = document.createElement('span');
            probe.style.font = style.font;
            probe.style.whiteSpace = 'pre';
            probe.textContent = select.selectedOptions[0].textContent;
            document.body.appendChild(probe);
            const text = probe.getBoundingClientRect().width;
            probe.remove();
            const room = select.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) - 20;
            return {fits: text <= room, text, room};
        }""",
        selector,
    )


def test_the_page_fits_a_wide_screen_and_a_phone(open_page, english_tts: ChatterboxTTS, tmp_path: Path) -> None:
    """random-tiny served: the header says the weights are random (its speech is noise); at 1280 px the default
    voice's name is whole; on a 390 px phone the status is not squeezed to a word a line, and nothing scrolls
    sideways. Every file the page asks for exists (the favicon included)."""
    settings = make_settings(tmp_path, model="random-tiny", max_new_tokens=MAX_NEW_TOKENS)
    server = start_server(settings, english_tts)
    try:
        for width, height in ((1280, 800), (390, 844)):
            web = open_page(server, width=width, height=height)
            failed: list[str] = []
            web.page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            web.open()
            page = web.page
            status = page.inner_text("#server-status")
            assert status == "Ready: random-tiny, random weights in the English model's shape; its speech is noise."
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            fit = _text_fits(page, "#voice")
            assert page.eval_on_selector("#voice", "s => s.selectedOptions[0].text") == "Default (built-in voice)"
            assert fit["fits"], (width, fit)
            box = page.locator("#server-status").bounding_box()
            line = float(page.eval_on_selector("#server-status", "e => parseFloat(getComputedStyle(e).lineHeight)"))
            assert box["height"] <= 3 * line + 1, (width, box, line)  # at most three lines, not one word a line
            icon = page.get_attribute("link[rel=icon]", "href")
            for path in ("/favicon.ico", icon):
                answer = page.request.get(server.url + path)
                assert answer.status == 200 and answer.headers["content-type"].startswith("image/svg+xml"), path
            assert failed == [], failed
            web.snap(f"{width}px")
        health = httpx.get(f"{server.url}/health").json()
        assert health["models"][0]["random_weights"] is True
        favicon = httpx.get(f"{server.url}/favicon.ico")
        assert favicon.status_code == 308 and favicon.headers["location"] == "/static/favicon.svg"
    finally:
        stop_server(server)


def test_a_multilingual_server_offers_its_languages_and_sends_the_choice(open_page, web_server: Server) -> None:
    """The English server dressed as a multilingual one (its /health and language list answered by the test): the
    picker offers the 23 languages, and the chosen one goes out as language_id, which the English model refuses
    with a message the page shows."""
    web = open_page(web_server)
    page = web.page
    health = {"status": "ok", "model": "multilingual", "variant": "multilingual"}
    listing = {"languages": [{"code": c, "name": n} for c, n in SUPPORTED_LANGUAGES.items()], "max_input_chars": 300}
    page.route("**/health", lambda route: route.fulfill(json=health))
    page.route("**/v1/audio/languages", lambda route: route.fulfill(json=listing))
    web.open()
    assert page.inner_text("#server-status") == "Ready: the multilingual model."
    codes = page.eval_on_selector_all("#language option", "options => options.map(o => o.value)")
    assert codes == ["", *SUPPORTED_LANGUAGES] and page.is_enabled("#language")
    assert page.input_value("#language") == ""  # the voice's own language unless one is chosen
    assert page.inner_text("#char-count").endswith("/ 300 characters")

    page.select_option("#language", "fr")
    assert web.speak("Bonjour tout le monde.") == "error"
    assert web.sent("POST", "/v1/audio/speech")[-1]["json"]["language_id"] == "fr"
    message = web.error()
    assert message.startswith("Speech failed: the english model speaks English only; language_id must be omitted")
    assert "French needs the multilingual model" in message and "CHATTERBOX_MODEL=multilingual" in message

    page.select_option("#language", "")
    assert web.speak("Hello again.") == "done", page.inner_text("#error")
    assert "language_id" not in web.sent("POST", "/v1/audio/speech")[-1]["json"]


def test_a_server_of_two_models_offers_both_and_speaks_with_the_chosen_one(
    open_page, english_tts: ChatterboxTTS, turbo_tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """English (vLLM) with Turbo beside it: the page shows a model picker, sends the chosen model's name, and asks
    the server which languages that model speaks."""
    turbo = ChatterboxTTS.from_local(turbo_tiny_checkpoint, device="cpu", engine="torch")
    server = start_server(make_settings(tmp_path, max_new_tokens=MAX_NEW_TOKENS), english_tts, extra=(turbo,))
    try:
        web = open_page(server)
        page = web.page
        web.open()
        assert page.inner_text("#server-status") == "Ready: the English, Turbo models."
        assert page.is_visible("#model")
        options = page.eval_on_selector_all("#model option", "options => options.map(o => [o.value, o.text])")
        assert options == [["chatterbox-english", "English"], ["chatterbox-turbo", "Turbo"]]

        page.select_option("#model", "chatterbox-turbo")
        page.wait_for_function("() => window.chatterboxPage.variant === 'turbo'")
        assert web.speak("Well [laugh] that was fun.") == "done", page.inner_text("#error")
        assert web.sent("POST", "/v1/audio/speech")[-1]["json"]["model"] == "chatterbox-turbo"
        assert web.sent("GET", "/v1/audio/languages?model=chatterbox-turbo")
        assert web.audio()["duration"] > 0

        page.select_option("#model", "chatterbox-english")
        assert web.speak("Hello again.") == "done", page.inner_text("#error")
        assert web.sent("POST", "/v1/audio/speech")[-1]["json"]["model"] == "chatterbox-english"
    finally:
        stop_server(server)
        turbo.close()


def test_a_keyed_server_asks_for_the_key_once_and_the_browser_keeps_it(open_page, keyed_web_server: Server) -> None:
    web = open_page(keyed_web_server)
    web.open()  # the page, its files and the lists need no key
    page = web.page
    assert page.locator("#key-form").is_hidden() and page.locator("#forget-key").is_hidden()

    page.fill("#text", "A keyed hello.")
    page.click("#speak")
    page.locator("#key-form").wait_for(state="visible", timeout=WAIT_MS)
    assert "needs an API key" in page.inner_text("#key-message")
    page.fill("#api-key", "sk-wrong")
    page.click("#key-save")
    page.wait_for_function("() => window.chatterboxPage.keyRequests === 2", timeout=WAIT_MS)
    assert "refused" in page.inner_text("#key-message")
    web.snap("key-asked")
    page.fill("#api-key", KEY)
    page.click("#key-save")
    assert web.wait_finished() == "done", page.inner_text("#error")
    assert page.locator("#key-form").is_hidden()
    assert web.audio()["duration"] > 0
    authorizations = [r["authorization"] for r in web.sent("POST", "/v1/audio/speech")]
    assert authorizations == [None, "Bearer sk-wrong", f"Bearer {KEY}"]
    assert page.evaluate("localStorage.getItem('chatterbox.apiKey')") == KEY
    assert page.locator("#forget-key").is_visible()

    page.reload()  # a new page load: the key comes from localStorage, nobody is asked
    page.wait_for_function(READY, timeout=READY_MS)
    assert web.speak("Again, without asking.", seed=2) == "done", page.inner_text("#error")
    assert web.state()["keyRequests"] == 0 and page.locator("#key-form").is_hidden()
    assert web.sent("POST", "/v1/audio/speech")[-1]["authorization"] == f"Bearer {KEY}"

    page.click("#forget-key")
    assert page.evaluate("localStorage.getItem('chatterbox.apiKey')") is None
    assert page.locator("#forget-key").is_hidden()

    # Without a key again: asked, and Cancel gives up with a plain message.
    page.click("#speak")
    page.locator("#key-form").wait_for(state="visible", timeout=WAIT_MS)
    page.click("#key-cancel")
    assert web.wait_finished() == "error"
    assert web.error() == "The server needs an API key; nothing was sent without one."
    assert page.locator("#key-form").is_hidden()


# ---------------------------------------------------------------------------------------- without a browser
def test_languages_endpoint_lists_what_the_english_model_speaks(web_server: Server, keyed_web_server: Server) -> None:
    for server in (web_server, keyed_web_server):  # open without a key, like the other listings
        response = httpx.get(f"{server.url}/v1/audio/languages", timeout=30)
        assert response.status_code == 200, response.text
        assert response.json() == {"languages": [{"code": "en", "name": "English"}], "max_input_chars": 4096}


def _unloaded_app(model: str, state: ServedModel) -> TestClient:
    """An app whose model state is `state`, without loading anything (its lifespan is not run)."""
    app = create_app(Settings(model=model, api_key=KEY))
    app.state.models = ModelRegistry([state])
    return TestClient(app)


def test_languages_endpoint_lists_the_multilingual_languages() -> None:
    # a stand-in for what a ready multilingual model serves with: the route reads only its family's languages
    tts = SimpleNamespace(family=families.get("multilingual"))
    ready = ServedModel(variant="multilingual", loaded=SimpleNamespace(tts=tts))
    response = _unloaded_app("multilingual", ready).get("/v1/audio/languages")
    assert response.status_code == 200
    body = response.json()
    assert body["languages"] == [{"code": c, "name": n} for c, n in SUPPORTED_LANGUAGES.items()]
    assert len(body["languages"]) == 23 and body["max_input_chars"] == 4096

    loading = _unloaded_app("multilingual", ServedModel()).get("/v1/audio/languages")
    assert loading.status_code == 503 and loading.json()["error"]["code"] == "model_loading"


def test_the_page_and_its_files_are_served_without_a_key_and_kept_out_of_the_schema() -> None:
    client = _unloaded_app("english", ServedModel())
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        asset = client.get(path)
        assert asset.status_code == 200 and kind in asset.headers["content-type"], path
        assert path in page.text
    html = page.text
    assert "http://" not in html and "https://" not in html  # nothing from outside: the machine may be offline
    for name in ("app.js", "style.css"):
        text = client.get(f"/static/{name}").text
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), name
    missing = client.get("/static/missing.js")
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    paths = client.get("/openapi.json").json()["paths"]
    assert not {p for p in paths if p == "/" or p.startswith("/static")}
