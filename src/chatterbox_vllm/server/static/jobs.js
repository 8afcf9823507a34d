// The page's "Long text" tab: long-form speech jobs (POST /v1/audio/speech/jobs and the routes under it).
// A job is made on the server piece by piece; this tab starts one from pasted text or an uploaded file, follows
// its progress (server-sent events, else polling), plays the finished pieces in order while the rest is made,
// offers the audio and subtitles for download, cancels it, and lists the earlier jobs.
// Plain JavaScript, no build step; app.js (loaded first) shares the API key handling and the lists as
// window.chatterboxApi.
"use strict";

(() => {
  const api = window.chatterboxApi;
  const JOBS = "/v1/audio/speech/jobs";
  const POLL_MS = 1000; // how often a job is asked for when its events cannot be followed
  const PREFETCH = 2; // finished pieces fetched ahead of the one playing, so the next starts without a gap
  const CONFIRM_MS = 5000; // how long a "Delete" waits for its second press
  const ENDED = new Set(["completed", "failed", "cancelled"]);
  const STATUS_WORDS = {
    queued: "Queued", running: "Running", completed: "Completed", failed: "Failed", cancelled: "Cancelled",
  };

  const $ = (id) => document.getElementById(id);
  const el = {
    panel: $("panel-jobs"), form: $("job-form"), sourceText: $("job-source-text"), sourceFile: $("job-source-file"),
    textField: $("job-text-field"), text: $("job-text"), charCount: $("job-char-count"), markdown: $("job-markdown"),
    fileField: $("job-file-field"), file: $("job-file"), modelField: $("job-model-field"), model: $("job-model"),
    voice: $("job-voice"), language: $("job-language"), format: $("job-format"), title: $("job-title"),
    autoplay: $("job-autoplay"), start: $("job-start"),
    view: $("job-view"), viewTitle: $("job-view-title"), status: $("job-status"), progress: $("job-progress"),
    bar: $("job-bar"), progressText: $("job-progress-text"), player: $("job-player"),
    playerStatus: $("job-player-status"), chapters: $("job-chapters"), downloads: $("job-downloads"),
    audioLink: $("job-download-audio"), vttLink: $("job-download-vtt"), srtLink: $("job-download-srt"),
    cancel: $("job-cancel"), list: $("job-list"), listStatus: $("job-list-status"), refresh: $("job-refresh"),
  };

  // What the tab is doing, readable from outside (the browser tests read it).
  const state = {
    id: null, // the job shown
    status: "idle", // its status, or "idle" before the first
    piecesDone: 0,
    piecesTotal: 0,
    transport: "none", // "events" (EventSource), "polling", or "none" once the job ended
    followedBy: "none", // how the shown job was last followed ("events" or "polling"), kept after it ended
    piecesPlayed: 0, // pieces the player has started, in order
    listed: 0, // jobs in the last list
  };
  window.chatterboxPage.jobs = state;

  // ---------------------------------------------------------------------------------------------- words
  function duration(seconds) {
    if (seconds < 9.95) return `${Math.max(0, seconds).toFixed(1)} s`;
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  const jobName = (job) => job.title || job.id;
  const extension = (format) => format; // as the server names its downloads

  /** A file name from the job's title (or id): what the server's Content-Disposition says too. */
  function fileName(job, ext) {
    const base = (job.title || job.id).replace(/[\\/:*?"<>|\x00-\x1f]+/g, " ").trim() || job.id;
    return `${base}.${ext}`;
  }

  // ----------------------------------------------------------------------------------------- the form
  const characters = (text) => Array.from(text).length; // code points, as the server counts

  function updateCount() {
    const count = characters(el.text.value);
    el.charCount.textContent = `${count.toLocaleString("en")} character${count === 1 ? "" : "s"}`;
  }

  function showSource() {
    const fromFile = el.sourceFile.checked;
    el.textField.hidden = fromFile;
    el.fileField.hidden = !fromFile;
  }

  /** Fill the voice picker from app.js's list, keeping this tab's own choice. */
  function fillVoices(voices) {
    if (!voices) return;
    const keep = el.voice.value && el.voice.dataset.loaded ? el.voice.value : "default";
    el.voice.replaceChildren(...voices.map((v) => new Option(api.voiceLabel(v), v.id)));
    const ids = voices.map((v) => v.id);
    el.voice.value = ids.includes(keep) ? keep : ids.includes("default") ? "default" : ids[0] || "";
    el.voice.disabled = voices.length === 0;
    el.voice.dataset.loaded = "true";
  }

  function fillModels(models) {
    if (!models || !models.length) return;
    const keep = el.model.value;
    el.model.replaceChildren(...models.map((m) => {
      const name = api.variantName(m.variant);
      return new Option(m.random ? `${name} (random weights)` : name, m.id);
    }));
    el.model.value = models.some((m) => m.id === keep) ? keep : models[0].id;
    el.modelField.hidden = models.length < 2;
    loadLanguages();
  }

  /** The `model` a job sends: OpenAI's name (the default model) unless the picker offers a choice. */
  const chosenModel = () => (api.models.length > 1 ? el.model.value : "tts-1");

  async function loadLanguages() {
    const query = api.models.length > 1 ? `?model=${encodeURIComponent(el.model.value)}` : "";
    try {
      const response = await api.apiFetch(`/v1/audio/languages${query}`);
      if (!response.ok) throw new api.PageError(`Could not list the languages: ${await api.errorMessage(response)}`);
      const { languages } = await response.json();
      const options = languages.map((l) => new Option(`${l.name} (${l.code})`, l.code));
      if (languages.length > 1) options.unshift(new Option("The voice's language (else English)", ""));
      el.language.replaceChildren(...options);
      el.language.disabled = languages.length <= 1;
      el.language.title = languages.length <= 1 ? "This model speaks only this language" : "";
      el.language.dataset.loaded = "true";
    } catch (err) {
      api.showError(api.describe(err));
    }
  }

  /** The request: JSON for pasted text, multipart with the file for an upload (the same fields as strings). */
  function jobRequest() {
    const fields = {
      model: chosenModel(),
      voice: el.voice.value || "default",
      response_format: el.format.value,
    };
    const title = el.title.value.trim();
    if (title) fields.title = title;
    if (!el.language.disabled && el.language.value) fields.language_id = el.language.value;
    if (el.sourceFile.checked) {
      const file = el.file.files[0];
      if (!file) throw new api.PageError("Choose a file to speak first (.txt, .md or .epub).");
      const form = new FormData();
      for (const [name, value] of Object.entries(fields)) form.append(name, value);
      form.append("file", file, file.name);
      return { method: "POST", body: form };
    }
    const body = { ...fields, input: el.text.value, input_format: el.markdown.checked ? "markdown" : "text" };
    return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  }

  async function startJob(event) {
    event.preventDefault();
    api.clearError();
    let request;
    try {
      request = jobRequest();
    } catch (err) {
      api.showError(api.describe(err));
      return;
    }
    el.start.disabled = true;
    try {
      const response = await api.apiFetch(JOBS, request);
      if (!response.ok) throw new api.PageError(`Could not start the job: ${await api.errorMessage(response)}`);
      const job = await response.json();
      follow(job, { autoplay: el.autoplay.checked });
      loadList();
    } catch (err) {
      api.showError(api.describe(err));
    } finally {
      el.start.disabled = false;
    }
  }

  // ------------------------------------------------------------------------------------ playing pieces
  /** Plays a job's finished pieces one after another on one <audio> element. Each piece is fetched (with the
   * API key, which an <audio> src could not send) and played from a blob: URL; up to PREFETCH are fetched ahead.
   * `limit` is how many pieces may be finished: a piece asked for too early (404 piece_not_ready) is asked for
   * again on the next update. */
  class PiecePlayer {
    constructor(audio, jobId, autoplay) {
      this.audio = audio;
      this.jobId = jobId;
      this.autoplay = autoplay; // start the first piece by itself; the next ones follow the one that ended
      this.limit = 0;
      this.nextFetch = 0;
      this.current = -1; // the piece in the element
      this.ready = new Map(); // index -> blob: URL, fetched and not played yet
      this.fetching = false;
      this.waiting = true; // nothing in the element, or its piece ended: the next one goes in when ready
      this.stopped = false;
      this.total = null; // the job's pieces_total once it is complete
      this.onEnded = () => {
        this.waiting = true;
        this.advance();
      };
      audio.addEventListener("ended", this.onEnded);
    }

    /** `count` pieces may be finished now; `total` is given when the job is complete. */
    offer(count, total = null) {
      if (this.stopped) return;
      this.limit = Math.max(this.limit, count);
      if (total !== null) this.total = total;
      this.fill();
    }

    async fill() {
      if (this.fetching || this.stopped) return;
      this.fetching = true;
      try {
        while (!this.stopped && this.nextFetch < this.limit && this.ready.size < PREFETCH) {
          const index = this.nextFetch;
          const response = await api.apiFetch(`${JOBS}/${this.jobId}/pieces/${index}/audio`);
          if (this.stopped) return;
          if (response.status === 404) {
            this.limit = index; // piece_not_ready (or the job is gone): asked for again on the next update
            break;
          }
          if (!response.ok) {
            el.playerStatus.textContent = `Piece ${index + 1} could not be played: ${await api.errorMessage(response)}`;
            break;
          }
          const blob = await response.blob();
          if (this.stopped) return;
          this.ready.set(index, URL.createObjectURL(blob));
          this.nextFetch = index + 1;
          this.advance();
        }
      } catch (err) {
        if (!this.stopped) el.playerStatus.textContent = `The pieces could not be fetched: ${api.describe(err)}`;
      } finally {
        this.fetching = false;
      }
    }

    /** Put the next piece in the element once the one before has ended (or none started yet). */
    advance() {
      if (this.stopped || !this.waiting) return;
      const index = this.current + 1;
      const url = this.ready.get(index);
      if (!url) {
        if (this.total !== null && index >= this.total && this.current >= 0) {
          el.playerStatus.textContent = `Played all ${this.total} pieces.`;
        }
        this.fill();
        return;
      }
      this.ready.delete(index);
      const previous = this.audio.src;
      const first = this.current < 0;
      this.current = index;
      this.waiting = false;
      this.audio.src = url;
      if (previous.startsWith("blob:")) URL.revokeObjectURL(previous);
      state.piecesPlayed = index + 1;
      el.playerStatus.textContent = `Piece ${index + 1}${this.total ? ` of ${this.total}` : ""}.`;
      if (!first || this.autoplay) {
        this.audio.play().catch(() => {
          el.playerStatus.textContent = `Piece ${index + 1} is ready: press play.`;
        });
      }
      this.fill();
    }

    stop() {
      this.stopped = true;
      this.audio.removeEventListener("ended", this.onEnded);
      this.audio.pause();
      for (const url of this.ready.values()) URL.revokeObjectURL(url);
      this.ready.clear();
    }
  }

  // ------------------------------------------------------------------------------------ following a job
  let shown = null; // {id, job, player, source, timer, ended} of the job in the view

  function stopFollowing() {
    if (!shown) return;
    if (shown.source) shown.source.close();
    if (shown.timer) clearTimeout(shown.timer);
    shown.source = null;
    shown.timer = null;
    state.transport = "none";
  }

  function clearView() {
    stopFollowing();
    if (shown && shown.player) shown.player.stop();
    const src = el.player.src;
    el.player.removeAttribute("src");
    el.player.load();
    if (src.startsWith("blob:")) URL.revokeObjectURL(src);
    el.playerStatus.textContent = "";
    el.downloads.hidden = true;
    el.chapters.hidden = true;
    el.chapters.replaceChildren();
    Object.assign(state, { piecesPlayed: 0, piecesDone: 0, piecesTotal: 0 });
  }

  /** Show `job` and follow it until it ends: its events where the browser can open them without a key (an
   * EventSource sends no Authorization header), else by polling. */
  function follow(job, { autoplay }) {
    clearView();
    shown = { id: job.id, job, player: new PiecePlayer(el.player, job.id, autoplay), source: null, timer: null };
    state.id = job.id;
    showJob(job);
    if (ENDED.has(job.status)) return;
    if (api.currentKey() || typeof EventSource !== "function") {
      poll(shown);
    } else {
      listen(shown);
    }
  }

  function listen(following) {
    const source = new EventSource(`${JOBS}/${following.id}/events`);
    following.source = source;
    state.transport = state.followedBy = "events";
    const received = (event) => {
      if (shown !== following) return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      if (data.job) showJob(data.job, data.piece);
      if (data.job && ENDED.has(data.job.status)) stopFollowing();
    };
    source.onmessage = received;
    source.onerror = () => {
      // Closed by the server after the end (already handled), or it failed: ask for the job instead.
      if (shown !== following || following.source !== source) return;
      source.close();
      following.source = null;
      poll(following);
    };
  }

  function poll(following) {
    state.transport = state.followedBy = "polling";
    const ask = async () => {
      following.timer = null;
      if (shown !== following) return;
      try {
        const response = await api.apiFetch(`${JOBS}/${following.id}`);
        if (shown !== following) return;
        if (response.status === 404) {
          showGone(following);
          return;
        }
        if (!response.ok) throw new api.PageError(`Could not follow the job: ${await api.errorMessage(response)}`);
        const job = await response.json();
        if (shown !== following) return;
        showJob(job);
        if (ENDED.has(job.status)) {
          stopFollowing();
          return;
        }
      } catch (err) {
        el.status.textContent = `${api.describe(err)} Trying again…`;
      }
      if (shown === following) following.timer = setTimeout(ask, POLL_MS);
    };
    ask();
  }

  /** The job disappeared (deleted elsewhere): said so, and nothing more is asked. */
  function showGone(following) {
    stopFollowing();
    following.player.stop();
    showCancelled(following, `The job ${jobName(following.job)} was deleted.`);
    loadList();
  }

  /** The shown job is gone (cancelled here or deleted elsewhere): its last progress without a time left. */
  function showCancelled(following, message) {
    setViewState("cancelled");
    el.status.textContent = message;
    const words = progressWords({ ...following.job, status: "cancelled" });
    el.progressText.textContent = `${words}; cancelled`;
    el.bar.setAttribute("aria-valuetext", `${words}; cancelled`);
    el.cancel.disabled = true;
  }

  function setViewState(status) {
    state.status = status;
    el.view.dataset.state = status;
  }

  function progressWords(job) {
    const done = job.pieces_done;
    const total = job.pieces_total;
    const parts = [`${done} / ${total} pieces`];
    if (job.audio_seconds > 0) parts.push(`${duration(job.audio_seconds)} of audio`);
    if (job.status === "running" || job.status === "queued") {
      parts.push(job.eta_seconds === null || job.eta_seconds === undefined
        ? "estimating the time left"
        : `about ${duration(job.eta_seconds)} left`);
    }
    return parts.join(", ");
  }

  function showJob(job, piece = null) {
    if (!shown || job.id !== shown.id) return;
    const wasEnded = ENDED.has(state.status);
    shown.job = job;
    setViewState(job.status);
    state.piecesDone = job.pieces_done;
    state.piecesTotal = job.pieces_total;
    el.viewTitle.textContent = `Job: ${jobName(job)}`;
    el.progress.hidden = false;
    el.bar.max = Math.max(1, job.pieces_total);
    el.bar.value = job.pieces_done;
    const words = progressWords(job);
    el.progressText.textContent = words;
    el.bar.setAttribute("aria-valuetext", words);
    el.status.textContent = statusWords(job);
    el.cancel.disabled = ENDED.has(job.status);
    showChapters(job);
    const complete = job.status === "completed";
    if (piece && Number.isInteger(piece.index)) shown.player.offer(piece.index + 1);
    shown.player.offer(job.pieces_done, complete ? job.pieces_total : null);
    if (complete || (job.status === "failed" && job.pieces_done > 0)) showDownloads(job);
    if (ENDED.has(job.status) && !wasEnded) {
      if (job.status === "failed") api.showError(`The job failed: ${(job.error && job.error.message) || "no reason given"}`);
      loadList();
    }
  }

  function statusWords(job) {
    switch (job.status) {
      case "queued":
        return "Queued: it starts when the jobs before it are done.";
      case "running":
        return "Making the audio…";
      case "completed":
        return `Done: ${duration(job.audio_seconds)} of audio in ${job.pieces_total} pieces.`;
      case "failed":
        return `Failed: ${(job.error && job.error.message) || "no reason given"}.`;
      case "cancelled":
        return "Cancelled.";
      default:
        return job.status;
    }
  }

  function showChapters(job) {
    const chapters = job.chapters || [];
    if (el.chapters.childElementCount === chapters.length) return;
    el.chapters.replaceChildren(...chapters.map((c) => {
      const item = document.createElement("li");
      item.textContent = `${c.title} (from piece ${c.start_piece + 1})`;
      return item;
    }));
    el.chapters.hidden = chapters.length === 0;
  }

  function showDownloads(job) {
    const base = `${JOBS}/${job.id}`;
    const partial = job.status === "completed" ? "" : " (the part made before it failed)";
    const links = [
      [el.audioLink, `${base}/audio`, extension(job.response_format), `Audio (${job.response_format.toUpperCase()})`],
      [el.vttLink, `${base}/subtitles?format=vtt`, "vtt", "Subtitles (WebVTT)"],
      [el.srtLink, `${base}/subtitles?format=srt`, "srt", "Subtitles (SRT)"],
    ];
    for (const [link, href, ext, words] of links) {
      link.href = href;
      link.download = fileName(job, ext);
      link.textContent = `${words}${partial}`;
    }
    el.downloads.hidden = false;
  }

  /** A download link followed without a key is the browser's own download; with a key (which a link cannot
   * send) the file is fetched here and saved from a blob: URL. */
  async function download(event) {
    if (!api.currentKey()) return;
    event.preventDefault();
    const link = event.currentTarget;
    try {
      const response = await api.apiFetch(link.getAttribute("href"));
      if (!response.ok) throw new api.PageError(`The download failed: ${await api.errorMessage(response)}`);
      const url = URL.createObjectURL(await response.blob());
      const save = document.createElement("a");
      save.href = url;
      save.download = link.download;
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      api.showError(api.describe(err));
    }
  }

  async function cancelShown() {
    if (!shown) return;
    const following = shown;
    api.clearError();
    el.cancel.disabled = true;
    try {
      await deleteJob(following.id);
      if (shown !== following) return;
      stopFollowing();
      following.player.stop();
      showCancelled(following, `Cancelled: ${jobName(following.job)} was stopped and its files removed.`);
    } catch (err) {
      el.cancel.disabled = ENDED.has(state.status);
      api.showError(api.describe(err));
    }
    loadList();
  }

  async function deleteJob(id) {
    const response = await api.apiFetch(`${JOBS}/${id}`, { method: "DELETE" });
    if (!response.ok && response.status !== 404) {
      throw new api.PageError(`Could not cancel the job: ${await api.errorMessage(response)}`);
    }
  }

  // ----------------------------------------------------------------------------------------- the list
  let listing = null; // the list request in progress
  let listAgain = false; // asked for while one was in progress: asked again after it, as things changed since

  function loadList() {
    if (listing) {
      listAgain = true;
      return listing;
    }
    listing = fetchList().finally(() => {
      listing = null;
      if (listAgain) {
        listAgain = false;
        loadList();
      }
    });
    return listing;
  }

  async function fetchList() {
    try {
      const response = await api.apiFetch(JOBS);
      if (!response.ok) throw new api.PageError(`Could not list the jobs: ${await api.errorMessage(response)}`);
      const { data } = await response.json();
      state.listed = data.length;
      el.list.replaceChildren(...data.map(listItem));
      el.listStatus.textContent = data.length ? `${data.length} job${data.length === 1 ? "" : "s"}, newest first.`
        : "No jobs yet.";
      el.list.dataset.loaded = "true";
    } catch (err) {
      el.listStatus.textContent = "The list could not be loaded.";
      api.showError(api.describe(err));
    }
  }

  function listItem(job) {
    const item = document.createElement("li");
    item.dataset.jobId = job.id;
    item.dataset.status = job.status;
    const name = document.createElement("span");
    name.className = "job-name";
    name.textContent = jobName(job);
    const status = document.createElement("span");
    status.className = `job-state job-state-${job.status}`;
    status.textContent = STATUS_WORDS[job.status] || job.status;
    const details = document.createElement("span");
    details.className = "hint";
    const when = new Date(job.created_at * 1000).toLocaleString();
    details.textContent = `${when} · ${job.voice} · ${job.response_format} · ${job.pieces_done}/${job.pieces_total} pieces`;
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = "Show";
    open.setAttribute("aria-label", `Show ${jobName(job)}`);
    open.addEventListener("click", () => {
      follow(job, { autoplay: false });
      el.view.scrollIntoView({ block: "nearest" });
    });
    const remove = document.createElement("button");
    remove.type = "button";
    const running = !ENDED.has(job.status);
    remove.textContent = running ? "Cancel" : "Delete";
    remove.setAttribute("aria-label", `${remove.textContent} ${jobName(job)}`);
    remove.addEventListener("click", () => removeListed(job, remove));
    const buttons = document.createElement("span");
    buttons.className = "buttons";
    buttons.append(open, remove);
    item.append(name, status, details, buttons);
    return item;
  }

  /** Delete (or cancel) a listed job; deleting finished audio takes a second press. */
  async function removeListed(job, button) {
    const running = !ENDED.has(job.status);
    if (!running && button.dataset.confirm !== "true") {
      button.dataset.confirm = "true";
      button.textContent = "Press again to delete";
      button.setAttribute("aria-label", `Press again to delete ${jobName(job)} and its audio`);
      setTimeout(() => {
        if (button.isConnected) {
          button.dataset.confirm = "";
          button.textContent = "Delete";
          button.setAttribute("aria-label", `Delete ${jobName(job)}`);
        }
      }, CONFIRM_MS);
      return;
    }
    api.clearError();
    if (shown && shown.id === job.id) {
      await cancelShown();
      return;
    }
    try {
      await deleteJob(job.id);
    } catch (err) {
      api.showError(api.describe(err));
    }
    loadList();
  }

  // ------------------------------------------------------------------------------------------------ start
  function start() {
    el.text.addEventListener("input", updateCount);
    el.sourceText.addEventListener("change", showSource);
    el.sourceFile.addEventListener("change", showSource);
    el.form.addEventListener("submit", startJob);
    el.cancel.addEventListener("click", cancelShown);
    el.refresh.addEventListener("click", () => loadList());
    el.model.addEventListener("change", loadLanguages);
    for (const link of [el.audioLink, el.vttLink, el.srtLink]) link.addEventListener("click", download);
    document.addEventListener("chatterbox:voices", (event) => fillVoices(event.detail));
    document.addEventListener("chatterbox:models", (event) => fillModels(event.detail));
    document.addEventListener("chatterbox:tab", (event) => {
      if (event.detail === "tab-jobs" && !el.list.dataset.loaded) loadList();
    });
    fillVoices(api.voices);
    fillModels(api.models);
    showSource();
    updateCount();
    if (!el.panel.hidden) loadList(); // opened on this tab (#long-text)
  }

  start();
})();
