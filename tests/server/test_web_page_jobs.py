"""The web page's "Long text" tab, end to end in headless Chromium against a live server serving random-tiny:
long-form speech jobs (POST /v1/audio/speech/jobs and the routes under it) started from pasted text and from an
uploaded Markdown file, followed to the end on the progress bar, their pieces played in order while the rest is
made, their audio and subtitles downloaded, one cancelled, API errors shown in the API's words.

The browser, the page helper and the screenshots (.cache/artifacts/web/<test name>.png) are test_web_page's.
"""

# ruff: noqa: F811 - the browser fixtures are test_web_page's, imported here; the tests name them as parameters

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_utils import Server, decode, make_settings, start_server, stop_server
from test_web_page import KEY, READY, READY_MS, WAIT_MS, Page, browser, open_page  # noqa: F401

from chatterbox_vllm.server.synthesis import PAUSE_SECONDS
from chatterbox_vllm.tts import ChatterboxTTS

MAX_NEW_TOKENS = 16  # short pieces: each takes a moment on the CPU
CHUNK_CHARS = 40  # about a sentence a piece: a few sentences make a few pieces
JOB_MS = 240_000  # a few pieces at the jobs' low priority, on a shared CPU
JOBS = "/v1/audio/speech/jobs"

SHORT_TEXT = "The first sentence is short. A second one follows it. And a third ends the text."
# Far more pieces than a test waits for: it is still running when it is cancelled.
LONG_TEXT = " ".join(f"Sentence number {i} keeps this job busy for a while." for i in range(300))
MARKDOWN = """# The Beginning

It was a quiet morning. Nobody was awake yet.

# The End

And then it was evening.
"""

VIEW_STATE = "document.getElementById('job-view').dataset.state"  # the shown job's status, "idle" before one
JOB_ENDED = f"() => ['completed', 'failed', 'cancelled'].includes({VIEW_STATE})"


@pytest.fixture(scope="module")
def jobs_server(english_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """random-tiny (the tiny English model's random weights), with its own data directory for the jobs."""
    tmp = tmp_path_factory.mktemp("web-jobs")
    settings = make_settings(
        tmp, model="random-tiny", max_new_tokens=MAX_NEW_TOKENS, chunk_chars=CHUNK_CHARS, data_dir=str(tmp / "data")
    )
    running = start_server(settings, english_tts)
    yield running
    stop_server(running)


class JobsPage:
    """The page opened on its Long text tab, with the job requests it sent (multipart bodies too)."""

    def __init__(self, web: Page) -> None:
        self.web = web
        self.page = web.page
        self.posts: list[dict] = []
        self.page.on("request", self._sent)

    def _sent(self, request) -> None:
        if request.method == "POST" and request.url == self.web.server.url + JOBS:
            self.posts.append({"content_type": request.headers.get("content-type", ""), "body": request.post_data})

    def open(self) -> None:
        self.web.open()
        self.page.click("#tab-jobs")
        self.page.wait_for_function("() => document.getElementById('job-list').dataset.loaded === 'true'")

    def start_text(self, text: str, *, title: str = "", fmt: str = "mp3", markdown: bool = False) -> None:
        self.page.check("#job-source-text")
        self.page.fill("#job-text", text)
        self.page.fill("#job-title", title)
        self.page.select_option("#job-format", fmt)
        self.page.set_checked("#job-markdown", markdown)
        self.page.click("#job-start")

    def wait_job(self, status: str | None = None) -> str:
        """Until the shown job ended (`status` given: has that status) or an error is shown; its status, or the
        error's words."""
        wanted = JOB_ENDED if status is None else f"() => {VIEW_STATE} === '{status}'"
        self.page.wait_for_function(f"() => ({wanted})() || !document.getElementById('error').hidden", timeout=JOB_MS)
        if self.page.is_visible("#error"):
            return f"error: {self.page.inner_text('#error')}"
        return self.page.evaluate(VIEW_STATE)

    def state(self) -> dict:
        return self.page.evaluate("() => ({...window.chatterboxPage.jobs})")

    def listed(self) -> dict[str, str]:
        """The earlier jobs' list as shown: job id -> status."""
        return dict(
            self.page.eval_on_selector_all(
                "#job-list li", "items => items.map(i => [i.dataset.jobId, i.dataset.status])"
            )
        )


def _api_job(server: Server, job_id: str) -> httpx.Response:
    return httpx.get(f"{server.url}{JOBS}/{job_id}", timeout=30)


# ------------------------------------------------------------------------------------------------ the tab
def test_the_tabs_work_from_the_keyboard_and_the_long_text_controls_are_labelled(
    open_page, jobs_server: Server
) -> None:
    web = open_page(jobs_server)
    web.open()
    page = web.page
    assert page.get_attribute("#tab-speech", "aria-selected") == "true"
    assert page.locator("#panel-speech").is_visible() and page.locator("#panel-jobs").is_hidden()
    assert page.get_attribute("#tab-jobs", "tabindex") == "-1"  # only the chosen tab is in the Tab order

    page.focus("#tab-speech")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-jobs"
    assert page.get_attribute("#tab-jobs", "aria-selected") == "true"
    assert page.get_attribute("#tab-speech", "aria-selected") == "false"
    assert page.locator("#panel-jobs").is_visible() and page.locator("#panel-speech").is_hidden()
    assert page.evaluate("window.location.hash") == "#long-text"
    page.wait_for_function("() => document.getElementById('job-list').dataset.loaded === 'true'")
    assert page.get_attribute("#panel-jobs", "aria-labelledby") == "tab-jobs"
    assert page.get_attribute("#tab-jobs", "aria-controls") == "panel-jobs"

    # The pickers are the Speech tab's lists: the same voices, the same languages.
    voices = page.eval_on_selector_all("#job-voice option", "options => options.map(o => o.value)")
    assert voices == page.eval_on_selector_all("#voice option", "options => options.map(o => o.value)")
    assert page.input_value("#job-voice") == "default"
    page.wait_for_function("() => document.getElementById('job-language').dataset.loaded === 'true'")
    assert page.eval_on_selector_all("#job-language option", "options => options.map(o => o.value)") == ["en"]
    assert page.input_value("#job-format") == "mp3"
    formats = page.eval_on_selector_all("#job-format option", "options => options.map(o => o.value)")
    assert {"mp3", "m4b"} <= set(formats)
    assert page.get_attribute("#job-status", "role") == "status"
    assert page.locator("#job-file-field").is_hidden()
    page.check("#job-source-file")
    assert page.locator("#job-file-field").is_visible() and page.locator("#job-text-field").is_hidden()
    assert ".epub" in page.get_attribute("#job-file", "accept")
    page.check("#job-source-text")

    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('#panel-jobs :is(input, select, textarea, button, audio, progress)')]
              .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                           && !e.getAttribute('aria-labelledby') && !e.textContent.trim())
              .map(e => e.id)"""
    )
    assert unlabelled == []

    # Tab goes from the tab into its panel; Home/End and the way back; a reload on #long-text keeps the tab.
    page.focus("#tab-jobs")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "job-source-text"
    page.focus("#tab-jobs")
    page.keyboard.press("Home")
    assert page.evaluate("document.activeElement.id") == "tab-speech"
    assert page.locator("#panel-speech").is_visible() and page.evaluate("window.location.hash") == ""
    page.keyboard.press("End")
    assert page.evaluate("document.activeElement.id") == "tab-jobs"
    page.reload()
    page.wait_for_function(READY, timeout=READY_MS)
    assert page.locator("#panel-jobs").is_visible() and page.get_attribute("#tab-jobs", "aria-selected") == "true"


def test_pasted_text_runs_to_done_plays_its_pieces_in_order_and_offers_downloads(
    open_page, jobs_server: Server
) -> None:
    jobs = JobsPage(open_page(jobs_server))
    jobs.open()
    page = jobs.page
    jobs.start_text(SHORT_TEXT, title="Three Sentences")
    page.wait_for_function("() => window.chatterboxPage.jobs.id !== null")
    assert jobs.wait_job() == "completed"
    assert jobs.state()["followedBy"] == "events"  # followed through its server-sent events (it may be done already)

    (post,) = jobs.posts
    assert post["content_type"].startswith("application/json")
    sent = json.loads(post["body"])
    assert sent["input"] == SHORT_TEXT and sent["title"] == "Three Sentences" and sent["response_format"] == "mp3"
    assert sent["voice"] == "default" and sent["model"] == "tts-1" and sent["input_format"] == "text"

    state = jobs.state()
    job = _api_job(jobs_server, state["id"]).json()
    assert job["status"] == "completed" and job["pieces_total"] >= 2
    # The bar at its end: every piece done, and said so in words.
    bar = page.eval_on_selector(
        "#job-bar", "b => ({value: b.value, max: b.max, text: b.getAttribute('aria-valuetext')})"
    )
    assert bar["value"] == bar["max"] == job["pieces_total"] == state["piecesDone"] == state["piecesTotal"]
    assert bar["text"].startswith(f"{job['pieces_total']} / {job['pieces_total']} pieces")
    assert page.inner_text("#job-status").startswith("Done:")
    assert page.is_disabled("#job-cancel")

    # The pieces play one after another, each fetched once, in order.
    page.wait_for_function(
        """() => {
            const audio = document.getElementById('job-player');
            return audio.src.startsWith('blob:') && audio.readyState >= 1 && audio.duration > 0;
        }""",
        timeout=WAIT_MS,
    )
    page.wait_for_function(f"() => window.chatterboxPage.jobs.piecesPlayed === {job['pieces_total']}", timeout=JOB_MS)
    fetched = [r["path"] for r in jobs.web.requests if "/pieces/" in r["path"]]
    assert fetched == [f"{JOBS}/{job['id']}/pieces/{i}/audio" for i in range(job["pieces_total"])]

    # Downloads: the audio (MP3, named after the title) and both subtitle formats, as the API serves them.
    assert page.locator("#job-downloads").is_visible()
    with page.expect_download(timeout=WAIT_MS) as audio_download:
        page.click("#job-download-audio")
    assert audio_download.value.suggested_filename == "Three Sentences.mp3"
    data = Path(audio_download.value.path()).read_bytes()
    samples, rate = decode(data, "mp3")
    spoken = job["audio_seconds"] + (job["pieces_total"] - 1) * PAUSE_SECONDS  # the pieces and their pauses
    assert rate == 24000 and len(samples) / rate == pytest.approx(spoken, abs=0.1)
    with page.expect_download(timeout=WAIT_MS) as vtt_download:
        page.click("#job-download-vtt")
    vtt = Path(vtt_download.value.path()).read_text()
    assert vtt.startswith("WEBVTT") and vtt.count("-->") == job["pieces_total"]
    assert vtt_download.value.suggested_filename.endswith(".vtt")
    with page.expect_download(timeout=WAIT_MS) as srt_download:
        page.click("#job-download-srt")
    srt = Path(srt_download.value.path()).read_text()
    assert re.match(r"1\r?\n\d\d:\d\d:\d\d,\d{3} --> ", srt) and srt.count("-->") == job["pieces_total"]

    page.wait_for_function(f"() => document.querySelector('#job-list li[data-job-id=\"{job['id']}\"]') !== null")
    assert jobs.listed()[job["id"]] == "completed"
    assert "Three Sentences" in page.inner_text(f"#job-list li[data-job-id='{job['id']}']")
    assert page.locator("#error").is_hidden()


def test_a_second_job_is_cancelled_and_shows_cancelled(open_page, jobs_server: Server) -> None:
    jobs = JobsPage(open_page(jobs_server))
    jobs.open()
    page = jobs.page
    jobs.start_text("A first job, left to finish.", title="Kept")
    assert jobs.wait_job() == "completed"
    first = jobs.state()["id"]

    jobs.start_text(LONG_TEXT, title="Too Long")
    page.wait_for_function(f"() => window.chatterboxPage.jobs.id && window.chatterboxPage.jobs.id !== '{first}'")
    second = jobs.state()["id"]
    page.wait_for_function("() => window.chatterboxPage.jobs.piecesDone >= 1", timeout=JOB_MS)  # under way
    # pieces done of all and the time left (or not known yet), in the text and for the bar's assistive name
    progress, valuetext = page.evaluate(
        "() => [document.getElementById('job-progress-text').textContent,"
        " document.getElementById('job-bar').getAttribute('aria-valuetext')]"
    )
    assert re.match(r"\d+ / \d{3} pieces, .*(about .+ left|estimating the time left)$", progress), progress
    assert valuetext == progress
    assert page.is_enabled("#job-cancel")
    page.click("#job-cancel")
    assert jobs.wait_job("cancelled") == "cancelled"
    assert page.inner_text("#job-status").startswith("Cancelled")
    assert [r for r in jobs.web.requests if r["method"] == "DELETE"] == [
        {"method": "DELETE", "path": f"{JOBS}/{second}", "authorization": None, "json": None}
    ]
    assert _api_job(jobs_server, second).status_code == 404  # cancelled and removed
    assert jobs.state()["transport"] == "none"  # nothing more is asked for it
    assert page.is_disabled("#job-cancel")
    page.wait_for_function(f"() => document.querySelector('#job-list li[data-job-id=\"{second}\"]') === null")
    assert jobs.listed().get(first) == "completed"
    assert page.locator("#error").is_hidden()

    # A finished job is deleted from the list with a second press of its Delete button.
    delete = page.locator(f"#job-list li[data-job-id='{first}'] button", has_text="Delete")
    delete.click()
    assert delete.inner_text() == "Press again to delete" and _api_job(jobs_server, first).status_code == 200
    delete.click()
    page.wait_for_function(f"() => document.querySelector('#job-list li[data-job-id=\"{first}\"]') === null")
    assert _api_job(jobs_server, first).status_code == 404


def test_an_uploaded_markdown_file_becomes_a_job_with_chapters(open_page, jobs_server: Server, tmp_path: Path) -> None:
    jobs = JobsPage(open_page(jobs_server))
    jobs.open()
    page = jobs.page
    story = tmp_path / "short story.md"
    story.write_text(MARKDOWN)
    page.check("#job-source-file")
    page.set_input_files("#job-file", str(story))
    page.select_option("#job-format", "m4b")
    page.click("#job-start")
    assert jobs.wait_job() == "completed"

    (post,) = jobs.posts
    assert post["content_type"].startswith("multipart/form-data")
    # (Chromium does not show playwright a body that holds a file: the server's job says what arrived.)
    job = _api_job(jobs_server, jobs.state()["id"]).json()
    assert job["response_format"] == "m4b" and job["voice"] == "default"
    assert job["title"] == "short story"  # no title given: the file's name
    assert page.inner_text("#job-view-title") == "Job: short story"
    assert [c["title"] for c in job["chapters"]] == ["The Beginning", "The End"]
    chapters = page.eval_on_selector_all("#job-chapters li", "items => items.map(i => i.textContent)")
    assert [c.split(" (from piece")[0] for c in chapters] == ["The Beginning", "The End"]
    assert page.locator("#job-downloads").is_visible()
    assert page.get_attribute("#job-download-audio", "href") == f"{JOBS}/{job['id']}/audio"
    assert "M4B" in page.inner_text("#job-download-audio")


def test_api_errors_are_shown_in_the_apis_words(open_page, jobs_server: Server, tmp_path: Path) -> None:
    jobs = JobsPage(open_page(jobs_server))
    jobs.open()
    page = jobs.page
    before = httpx.get(f"{jobs_server.url}{JOBS}", timeout=30).json()["data"]

    # Nothing to speak: the API's 400, its message as the server wrote it.
    jobs.start_text("   \n  ")
    expected = httpx.post(f"{jobs_server.url}{JOBS}", timeout=30,
                          json={"model": "tts-1", "voice": "default", "input": "   \n  "})  # fmt: skip
    assert expected.status_code == 400
    message = expected.json()["error"]["message"]
    assert jobs.web.error() == f"Could not start the job: {message}"
    assert page.evaluate(VIEW_STATE) == "idle"  # no job was shown

    # A file the API does not take.
    binary = tmp_path / "picture.epub"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    page.check("#job-source-file")
    page.set_input_files("#job-file", str(binary))
    page.click("#job-start")
    page.wait_for_function(
        "() => document.getElementById('error').textContent.startsWith('Could not start the job: ') "
        f"&& !document.getElementById('error').textContent.endsWith({message!r})"
    )
    direct = httpx.post(f"{jobs_server.url}{JOBS}", timeout=30, data={"model": "tts-1", "voice": "default"},
                        files={"file": ("picture.epub", io.BytesIO(binary.read_bytes()))})  # fmt: skip
    assert direct.status_code in (400, 415)
    assert jobs.web.error() == f"Could not start the job: {direct.json()['error']['message']}"

    # No file chosen: said in the page, nothing sent.
    page.set_input_files("#job-file", [])
    page.click("#job-start")
    page.wait_for_function("() => document.getElementById('error').textContent.startsWith('Choose a file')")
    assert len(jobs.posts) == 2
    assert httpx.get(f"{jobs_server.url}{JOBS}", timeout=30).json()["data"] == before  # no job was made


def test_without_the_event_stream_the_page_polls_the_job(open_page, jobs_server: Server) -> None:
    """An EventSource that cannot connect (a proxy that drops it): the page asks for the job instead, to the end."""
    jobs = JobsPage(open_page(jobs_server))
    jobs.page.route("**/events", lambda route: route.abort("connectionrefused"))
    jobs.open()
    jobs.start_text("Polled to the end.", title="Polled")
    jobs.page.wait_for_function("() => window.chatterboxPage.jobs.transport === 'polling'")
    assert jobs.wait_job() == "completed"
    job_id = jobs.state()["id"]
    polled = [r for r in jobs.web.requests if r["method"] == "GET" and r["path"] == f"{JOBS}/{job_id}"]
    assert polled
    assert jobs.page.locator("#job-downloads").is_visible()
    jobs.page.wait_for_function(
        "() => { const a = document.getElementById('job-player'); return a.src.startsWith('blob:') && a.duration > 0; }"
    )


def test_a_keyed_server_is_followed_by_polling_and_downloads_carry_the_key(
    open_page, english_tts: ChatterboxTTS, tmp_path: Path
) -> None:
    """An EventSource and a plain link cannot send the API key: with a key the page polls the job and fetches the
    downloads itself (saved from a blob: URL under the job's name)."""
    settings = make_settings(
        tmp_path, model="random-tiny", max_new_tokens=MAX_NEW_TOKENS, chunk_chars=CHUNK_CHARS,
        data_dir=str(tmp_path / "data"), api_key=KEY,
    )  # fmt: skip
    server = start_server(settings, english_tts)
    try:
        web = open_page(server)
        web.open()
        page = web.page
        page.click("#tab-jobs")  # the list needs the key: asked for once
        page.locator("#key-form").wait_for(state="visible", timeout=WAIT_MS)
        page.fill("#api-key", KEY)
        page.click("#key-save")
        page.wait_for_function("() => document.getElementById('job-list').dataset.loaded === 'true'")
        jobs = JobsPage(web)
        jobs.start_text("Spoken with a key.", title="Keyed")
        assert jobs.wait_job() == "completed"
        assert jobs.state()["transport"] == "none"
        job_id = jobs.state()["id"]
        keys = [r["authorization"] for r in web.requests if r["path"].startswith(JOBS)]
        assert keys[0] is None and set(keys[1:]) == {f"Bearer {KEY}"}  # the list's 401 asked for it, then sent
        assert not [r for r in web.requests if r["path"].endswith("/events")]  # no EventSource: it has no key
        assert [r for r in web.requests if r["path"] == f"{JOBS}/{job_id}"]  # polled
        with page.expect_download(timeout=WAIT_MS) as download:
            page.click("#job-download-vtt")
        assert download.value.suggested_filename == "Keyed.vtt"
        assert Path(download.value.path()).read_text().startswith("WEBVTT")
        assert web.state()["keyRequests"] == 1
    finally:
        stop_server(server)
