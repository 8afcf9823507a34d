// The page at `/`: speak text with a chosen voice, hear it while it is made, download it, clone a voice.
// Plain JavaScript with no build step and no outside resources; it talks only to the server that served it.
// The "Long text" tab (jobs.js) uses what this file shares as window.chatterboxApi: the API key, the error
// messages, and the model and voice lists (announced as "chatterbox:models" / "chatterbox:voices" events).
"use strict";

(() => {
  const SAMPLE_RATE = 24000; // response_format "pcm": 16-bit little-endian mono at 24 kHz
  const START_LEAD_S = 0.1; // head start of the first chunk (and after an underrun), so it starts whole
  const KEY_STORAGE = "chatterbox.apiKey";
  const SLIDER_DEFAULTS = { speed: "1", exaggeration: "0.5", "cfg-weight": "0.5", temperature: "0.8" };
  const FORMAT_NAMES = { wav: "WAV", mp3: "MP3", flac: "FLAC", opus: "Opus", aac: "AAC", pcm: "PCM" };

  const $ = (id) => document.getElementById(id);
  const el = {
    serverStatus: $("server-status"), forgetKey: $("forget-key"),
    keyForm: $("key-form"), keyMessage: $("key-message"), apiKey: $("api-key"), keyCancel: $("key-cancel"),
    error: $("error"),
    speakForm: $("speak-form"), text: $("text"), charCount: $("char-count"), voice: $("voice"),
    modelField: $("model-field"), model: $("model"),
    language: $("language"), format: $("format"), seed: $("seed"), speak: $("speak"), stop: $("stop"),
    reset: $("reset"), result: $("result"), speakStatus: $("speak-status"), player: $("player"),
    download: $("download"),
    cloneForm: $("clone-form"), cloneName: $("clone-name"), cloneFile: $("clone-file"),
    cloneConsent: $("clone-consent"), cloneSubmit: $("clone-submit"), cloneStatus: $("clone-status"),
    tabs: [...document.querySelectorAll('#tabs [role="tab"]')],
  };

  // What the page is doing, readable from outside (the browser tests read it).
  const state = {
    variant: null, // the chosen model's variant ("english", "multilingual", "turbo", "nano") once it is ready
    models: [], // the models that serve: {id, variant}, the default one first
    maxChars: 4096,
    phase: "idle", // idle, streaming, encoding, done, stopped, error
    playback: "none", // "webaudio" while speech is played as it streams, "unavailable" without Web Audio
    scheduledChunks: 0, // audio buffers scheduled for playback during the last request
    scheduledSeconds: 0, // and how much audio they hold
    receivedBytes: 0,
    audioType: "", // media type of what the <audio> element was given
    keyRequests: 0, // how often the page asked for an API key
  };
  window.chatterboxPage = state;

  /** An error whose message is meant for the person using the page. */
  class PageError extends Error {}

  // ------------------------------------------------------------------------------------------- messages
  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = false;
    el.error.scrollIntoView({ block: "nearest" });
  }

  function clearError() {
    el.error.textContent = "";
    el.error.hidden = true;
  }

  function describe(err) {
    if (err instanceof PageError) return err.message;
    if (err instanceof TypeError) return "Could not reach the server. Check that it is running, then try again.";
    return `Something went wrong in the page: ${err && err.message ? err.message : err}`;
  }

  /** The API's error.message (every error has OpenAI's shape), else the status in words. */
  async function errorMessage(response) {
    let text = "";
    try {
      text = await response.text();
    } catch (_) {
      // the body could not be read: fall through to the status
    }
    try {
      const body = JSON.parse(text);
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) {
      // not JSON
    }
    return `the server answered ${response.status} ${response.statusText || ""}`.trim();
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // -------------------------------------------------------------------------------------------- API key
  // Asked for on the first 401, kept in localStorage (or, where that is blocked, for this page's lifetime),
  // sent as "Authorization: Bearer <key>" from then on.
  let memoryKey = "";
  let keyWaiters = null; // {promise, resolve, reject} while the key form is open

  function currentKey() {
    try {
      return localStorage.getItem(KEY_STORAGE) || memoryKey;
    } catch (_) {
      return memoryKey;
    }
  }

  function storeKey(key) {
    memoryKey = key;
    try {
      if (key) localStorage.setItem(KEY_STORAGE, key);
      else localStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      // storage blocked: the key lives in memory only
    }
    el.forgetKey.hidden = !key;
  }

  function askForKey(message) {
    state.keyRequests += 1;
    el.keyMessage.textContent = message;
    el.keyForm.hidden = false;
    el.apiKey.value = "";
    el.apiKey.focus();
    if (!keyWaiters) {
      const waiters = {};
      waiters.promise = new Promise((resolve, reject) => Object.assign(waiters, { resolve, reject }));
      keyWaiters = waiters;
    }
    return keyWaiters.promise;
  }

  function keyEntered(event) {
    event.preventDefault();
    const key = el.apiKey.value.trim();
    if (!key) return;
    storeKey(key);
    el.apiKey.value = "";
    el.keyForm.hidden = true;
    const waiters = keyWaiters;
    keyWaiters = null;
    if (waiters) waiters.resolve();
  }

  function keyCancelled() {
    el.keyForm.hidden = true;
    const waiters = keyWaiters;
    keyWaiters = null;
    if (waiters) waiters.reject(new PageError("The server needs an API key; nothing was sent without one."));
  }

  /** fetch() with the stored key; a 401 asks for a key in the page and sends the request again with it. */
  async function apiFetch(path, init = {}) {
    for (;;) {
      const key = currentKey();
      const headers = new Headers(init.headers || {});
      if (key) headers.set("Authorization", `Bearer ${key}`);
      let response;
      try {
        response = await fetch(path, { ...init, headers });
      } catch (err) {
        if (err.name === "AbortError") throw err;
        throw new PageError("Could not reach the server. Check that it is running, then try again.");
      }
      if (response.status !== 401) return response;
      const reason = await errorMessage(response);
      if (key) {
        storeKey("");
        await askForKey(`The server refused that key (${reason}). Enter the right one.`);
      } else {
        await askForKey("This server needs an API key. Enter it once; this browser keeps it.");
      }
    }
  }

  // ------------------------------------------------------------------------------ model, voices, languages
  // Each model's name for people comes from its family (/health's display_name); the variant where none is given.
  const displayNames = {};
  const variantName = (variant) => displayNames[variant] || variant;

  /** Wait until the default model serves; the models that serve by then fill the model picker (shown when the
   * server loads more than one). A model that failed is reported, the others are used. */
  async function waitForModel() {
    for (;;) {
      let response;
      let body = {};
      try {
        response = await fetch("/health");
        body = await response.json();
      } catch (_) {
        el.serverStatus.textContent = "Cannot reach the server; trying again…";
        await sleep(3000);
        continue;
      }
      const models = body.models || [];
      const ready = models.filter((m) => m.status === "ready");
      const defaultReady = response.ok || (models.length > 0 && models[0].status === "ready");
      if (defaultReady && body.status !== "loading") {
        showModels(ready.length ? ready : [{ id: "tts-1", variant: body.variant }]);
        const failed = models.filter((m) => m.status === "error");
        if (failed.length) {
          showError(`Not loaded: ${failed.map((m) => `${m.model} (${m.error})`).join("; ")}.`);
        }
        return true;
      }
      if (body.status === "error") {
        el.serverStatus.textContent = "The model failed to load.";
        showError(`The model failed to load: ${body.error || "the server log says why"}.`);
        return false;
      }
      el.serverStatus.textContent = "The model is loading; this page waits for it…";
      await sleep(3000);
    }
  }

  /** What the header says is loaded, in the words of /health: a random-weight checkpoint (random-tiny) is
   * said to be one, as its speech is noise. */
  function describeModels(models) {
    const names = models.map((m) => variantName(m.variant));
    if (models.length === 1 && models[0].random) {
      return `Ready: ${models[0].model}, random weights in the ${names[0]} model's shape; its speech is noise.`;
    }
    const listed = models.map((m, i) => (m.random ? `${names[i]} (random weights: noise)` : names[i]));
    return listed.length === 1 ? `Ready: the ${listed[0]} model.` : `Ready: the ${listed.join(", ")} models.`;
  }

  function showModels(models) {
    for (const m of models) if (m.display_name) displayNames[m.variant] = m.display_name;
    state.models = models.map((m) => ({ id: m.id, variant: m.variant, model: m.model, random: !!m.random_weights }));
    el.model.replaceChildren(...state.models.map((m) => {
      const name = variantName(m.variant);
      return new Option(m.random ? `${name} (random weights)` : name, m.id);
    }));
    el.model.value = state.models[0].id;
    el.modelField.hidden = state.models.length < 2;
    el.serverStatus.textContent = describeModels(state.models);
    chooseModel();
    shared.models = state.models;
    document.dispatchEvent(new CustomEvent("chatterbox:models", { detail: state.models }));
  }

  /** The `model` a request sends: OpenAI's name (the default model) unless the picker offers a choice. */
  const chosenModel = () => (state.models.length > 1 ? el.model.value : "tts-1");
  const modelQuery = () => (state.models.length > 1 ? `?model=${encodeURIComponent(el.model.value)}` : "");

  function chooseModel() {
    const chosen = state.models.find((m) => m.id === el.model.value) || state.models[0];
    state.variant = chosen.variant;
  }

  /** A voice's name, with its id where the name does not already start with it: "Default (built-in voice)",
   * "Alloy", "French (built-in voice, fr)", "My Voice (my-voice)". */
  function voiceLabel(voice) {
    const name = voice.name || "";
    const id = voice.id;
    const firstWord = name.split(/[^A-Za-z0-9_.-]/)[0].toLowerCase();
    if (!name || name.toLowerCase() === id.toLowerCase()) return name || id;
    if (firstWord === id.toLowerCase()) return name;
    return name.endsWith(")") ? `${name.slice(0, -1)}, ${id})` : `${name} (${id})`;
  }

  /** Fill the voice picker; select `wanted` (else keep the current choice, else "default"). */
  async function loadVoices(wanted) {
    const response = await apiFetch("/v1/audio/voices");
    if (!response.ok) throw new PageError(`Could not list the voices: ${await errorMessage(response)}`);
    const { voices } = await response.json();
    const keep = wanted || el.voice.value || "default";
    el.voice.replaceChildren(...voices.map((v) => new Option(voiceLabel(v), v.id)));
    const ids = voices.map((v) => v.id);
    el.voice.value = ids.includes(keep) ? keep : ids.includes("default") ? "default" : ids[0] || "";
    el.voice.disabled = voices.length === 0;
    el.voice.dataset.loaded = "true";
    shared.voices = voices;
    document.dispatchEvent(new CustomEvent("chatterbox:voices", { detail: voices }));
  }

  async function loadLanguages() {
    const response = await apiFetch(`/v1/audio/languages${modelQuery()}`);
    if (!response.ok) throw new PageError(`Could not list the languages: ${await errorMessage(response)}`);
    const body = await response.json();
    if (Number.isInteger(body.max_input_chars)) state.maxChars = body.max_input_chars;
    const options = body.languages.map((l) => new Option(`${l.name} (${l.code})`, l.code));
    if (body.languages.length > 1) {
      // No language_id: the voice's own language (a language-code voice), else English.
      options.unshift(new Option("The voice's language (else English)", ""));
    }
    el.language.replaceChildren(...options);
    el.language.disabled = body.languages.length <= 1;
    el.language.title = body.languages.length <= 1 ? "This model speaks only this language" : "";
    el.language.dataset.loaded = "true";
    updateCount();
  }

  // -------------------------------------------------------------------------------------------- controls
  const characters = (text) => Array.from(text).length; // code points, as the server counts

  function updateCount() {
    const count = characters(el.text.value);
    const over = count > state.maxChars;
    el.charCount.textContent = `${count} / ${state.maxChars} characters${over ? " (too long)" : ""}`;
    el.charCount.classList.toggle("over", over);
    el.text.setAttribute("aria-invalid", String(over));
  }

  const sliders = () => Object.keys(SLIDER_DEFAULTS).map((id) => $(id));

  function showSlider(slider) {
    $(`${slider.id}-value`).textContent = slider.value;
  }

  function resetSliders() {
    for (const slider of sliders()) {
      slider.value = SLIDER_DEFAULTS[slider.id];
      showSlider(slider);
    }
  }

  function setPhase(phase, message) {
    state.phase = phase;
    el.result.dataset.state = phase;
    if (message !== undefined) el.speakStatus.textContent = message;
  }

  // ------------------------------------------------------------------------------------ streamed playback
  // The speech request asks for raw PCM and reads the body as it arrives: each piece becomes an AudioBuffer
  // scheduled right after the previous one on one AudioContext, so playback starts with the first chunk.
  let audioContext = null;

  function getAudioContext() {
    if (audioContext) return audioContext;
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return null;
    try {
      audioContext = new Context({ sampleRate: SAMPLE_RATE });
    } catch (_) {
      try {
        audioContext = new Context(); // buffers at 24 kHz are resampled to the device's rate
      } catch (_) {
        audioContext = null;
      }
    }
    return audioContext;
  }

  class StreamPlayer {
    constructor(context) {
      this.context = context;
      this.nextStart = 0;
      this.sources = new Set();
    }

    /** Play `bytes` (an even number of int16 little-endian bytes) right after what was scheduled before. */
    schedule(bytes) {
      if (!this.context) return;
      const count = bytes.length / 2;
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength); // any alignment
      const samples = new Float32Array(count);
      for (let i = 0; i < count; i += 1) samples[i] = view.getInt16(2 * i, true) / 32768;
      const buffer = this.context.createBuffer(1, count, SAMPLE_RATE);
      buffer.copyToChannel(samples, 0);
      const source = this.context.createBufferSource();
      source.buffer = buffer;
      source.connect(this.context.destination);
      const start = Math.max(this.nextStart, this.context.currentTime + START_LEAD_S);
      source.start(start);
      this.nextStart = start + buffer.duration;
      this.sources.add(source);
      source.onended = () => this.sources.delete(source);
      state.scheduledChunks += 1;
      state.scheduledSeconds += buffer.duration;
      el.result.dataset.scheduledChunks = String(state.scheduledChunks);
    }

    stop() {
      for (const source of this.sources) {
        try {
          source.stop();
        } catch (_) {
          // not started yet or already over
        }
      }
      this.sources.clear();
    }
  }

  /** Read a PCM response to its end, playing it on the way; the whole PCM (an even byte count). */
  async function playStream(response, player) {
    const reader = response.body.getReader();
    const parts = [];
    let total = 0;
    let carry = null; // the first byte of a sample whose second byte comes in the next chunk
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        if (err.name === "AbortError") throw err;
        throw new PageError(
          "The audio stream broke off before the end (the connection was lost or the server failed); " +
            "what arrived was played.",
        );
      }
      if (chunk.done) break;
      let bytes = chunk.value;
      if (!bytes || bytes.length === 0) continue;
      parts.push(bytes);
      total += bytes.length;
      state.receivedBytes = total;
      if (carry !== null) {
        const joined = new Uint8Array(bytes.length + 1);
        joined[0] = carry;
        joined.set(bytes, 1);
        bytes = joined;
        carry = null;
      }
      if (bytes.length % 2 === 1) {
        carry = bytes[bytes.length - 1];
        bytes = bytes.subarray(0, bytes.length - 1);
      }
      if (bytes.length > 0) player.schedule(bytes);
    }
    const pcm = new Uint8Array(total - (total % 2)); // a lone last byte is no sample
    let offset = 0;
    for (const part of parts) {
      const room = pcm.length - offset;
      pcm.set(room < part.length ? part.subarray(0, room) : part, offset);
      offset += Math.min(room, part.length);
    }
    return pcm;
  }

  /** A WAV file (16-bit mono, 24 kHz) around PCM bytes. */
  function wavBlob(pcm) {
    const header = new DataView(new ArrayBuffer(44));
    const text = (offset, value) => [...value].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
    text(0, "RIFF");
    header.setUint32(4, 36 + pcm.length, true);
    text(8, "WAVE");
    text(12, "fmt ");
    header.setUint32(16, 16, true); // fmt chunk size
    header.setUint16(20, 1, true); // PCM
    header.setUint16(22, 1, true); // mono
    header.setUint32(24, SAMPLE_RATE, true);
    header.setUint32(28, SAMPLE_RATE * 2, true); // bytes per second
    header.setUint16(32, 2, true); // bytes per frame
    header.setUint16(34, 16, true); // bits per sample
    text(36, "data");
    header.setUint32(40, pcm.length, true);
    return new Blob([header.buffer, pcm], { type: "audio/wav" });
  }

  // ----------------------------------------------------------------------------------------------- speak
  let current = null; // {controller, player} of the request in progress
  let objectUrls = [];

  function clearResult() {
    el.player.pause();
    el.player.removeAttribute("src");
    el.player.load();
    el.download.hidden = true;
    el.download.removeAttribute("href");
    state.audioType = "";
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls = [];
  }

  function fileName(voice, format) {
    const now = new Date();
    const pad = (n) => String(n).padStart(2, "0");
    const stamp =
      `${now.getFullYear()}${pad(now.getMonth() + 1)}${pad(now.getDate())}-` +
      `${pad(now.getHours())}${pad(now.getMinutes())}${pad(now.getSeconds())}`;
    const safeVoice = voice.replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "") || "voice";
    return `chatterbox-${safeVoice}-${stamp}.${format}`;
  }

  function sizeText(bytes) {
    return bytes < 1024 * 1024 ? `${Math.max(1, Math.round(bytes / 1024))} KB` : `${(bytes / 1048576).toFixed(1)} MB`;
  }

  /** The <audio> element gets `audioBlob`; the download link offers `downloadBlob` as `format`. */
  function showResult(audioBlob, downloadBlob, format, voice) {
    const audioUrl = URL.createObjectURL(audioBlob);
    const downloadUrl = downloadBlob === audioBlob ? audioUrl : URL.createObjectURL(downloadBlob);
    objectUrls = [...new Set([audioUrl, downloadUrl])];
    state.audioType = audioBlob.type;
    el.player.src = audioUrl;
    el.download.href = downloadUrl;
    el.download.download = fileName(voice, format);
    const size = sizeText(downloadBlob.size);
    el.download.textContent = `Download ${el.download.download} (${FORMAT_NAMES[format]}, ${size})`;
    el.download.hidden = false;
  }

  function speechBody(format, seed) {
    const body = {
      model: chosenModel(),
      input: el.text.value,
      voice: el.voice.value || "default",
      response_format: format,
      speed: Number($("speed").value),
      exaggeration: Number($("exaggeration").value),
      cfg_weight: Number($("cfg-weight").value),
      temperature: Number($("temperature").value),
      seed,
    };
    // A model that speaks more than one language (its /v1/audio/languages list) takes the language chosen.
    if (!el.language.disabled && el.language.value) body.language_id = el.language.value;
    return body;
  }

  async function requestSpeech(body, signal) {
    const response = await apiFetch("/v1/audio/speech", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal,
    });
    if (!response.ok) throw new PageError(`Speech failed: ${await errorMessage(response)}`);
    return response;
  }

  function chosenSeed() {
    const text = el.seed.value.trim();
    if (text === "") return Math.floor(Math.random() * 2 ** 31);
    const seed = Number(text);
    if (!Number.isSafeInteger(seed) || seed < 0) throw new PageError("The seed must be a whole number, 0 or more.");
    return seed;
  }

  async function speak(event) {
    event.preventDefault();
    clearError();
    const text = el.text.value;
    if (!text.trim()) {
      showError("Type some text to speak first.");
      el.text.focus();
      return;
    }
    const count = characters(text);
    if (count > state.maxChars) {
      showError(`The text has ${count} characters; this server speaks at most ${state.maxChars}. Shorten it.`);
      return;
    }
    let seed;
    try {
      seed = chosenSeed();
    } catch (err) {
      showError(describe(err));
      return;
    }
    stopSpeaking();
    clearResult();
    const format = el.format.value;
    const voice = el.voice.value || "default";
    // Made inside the click, so the browser lets it play.
    const context = getAudioContext();
    if (context && context.state === "suspended") context.resume().catch(() => {});
    state.playback = context ? "webaudio" : "unavailable";
    state.scheduledChunks = 0;
    state.scheduledSeconds = 0;
    state.receivedBytes = 0;
    el.result.dataset.scheduledChunks = "0";
    const request = { controller: new AbortController(), player: new StreamPlayer(context) };
    current = request;
    el.speak.disabled = true;
    el.stop.disabled = false;
    setPhase("streaming", context ? "Speaking…" : "Receiving the audio (this browser cannot play it yet)…");
    try {
      const signal = request.controller.signal;
      const streamed = await requestSpeech(speechBody("pcm", seed), signal);
      const pcm = await playStream(streamed, request.player);
      if (pcm.length === 0) throw new PageError("The server sent no audio.");
      const seconds = pcm.length / 2 / SAMPLE_RATE;
      const heard = wavBlob(pcm);
      // The <audio> element and the download: WAV is the streamed PCM with a header, made here; PCM downloads
      // the raw bytes (the element plays the WAV, as browsers cannot play headerless PCM). MP3, FLAC, Opus and
      // AAC cannot be encoded in the page, so a second request asks the server for that format with the same
      // seed and settings, which gives the same speech.
      if (format === "wav" || format === "pcm") {
        const download = format === "wav" ? heard : new Blob([pcm], { type: "application/octet-stream" });
        showResult(heard, download, format, voice);
      } else {
        setPhase("encoding", `Making the ${FORMAT_NAMES[format]} file…`);
        try {
          const encoded = await requestSpeech(speechBody(format, seed), signal);
          const blob = await encoded.blob();
          showResult(blob, blob, format, voice);
        } catch (err) {
          if (err.name === "AbortError") throw err;
          showResult(heard, heard, "wav", voice);
          showError(`Could not make the ${FORMAT_NAMES[format]} file (${describe(err)}); here is the WAV instead.`);
        }
      }
      setPhase("done", `Done: ${seconds.toFixed(1)} s of speech (voice ${voice}, seed ${seed}).`);
    } catch (err) {
      if (err.name === "AbortError") {
        setPhase("stopped", "Stopped.");
      } else {
        request.player.stop();
        setPhase("error", "Nothing to play: the request failed.");
        showError(describe(err));
      }
    } finally {
      if (current === request) {
        current = null;
        el.speak.disabled = false;
        el.stop.disabled = true;
      }
    }
  }

  function stopSpeaking() {
    if (!current) return;
    current.controller.abort();
    current.player.stop();
  }

  // ------------------------------------------------------------------------------------------ clone voice
  async function cloneVoice(event) {
    event.preventDefault();
    clearError();
    const name = el.cloneName.value.trim();
    const file = el.cloneFile.files[0];
    if (!name) return showError("Give the voice a name.");
    if (!file) return showError("Choose an audio clip of the voice.");
    if (!el.cloneConsent.checked) {
      return showError("Tick the box to confirm that the speaker agreed to be cloned.");
    }
    const form = new FormData();
    form.append("name", name);
    form.append("audio_sample", file, file.name);
    form.append("consent", "yes");
    el.cloneSubmit.disabled = true;
    el.cloneStatus.textContent = "Uploading the clip…";
    try {
      const response = await apiFetch("/v1/audio/voices", { method: "POST", body: form });
      if (!response.ok) throw new PageError(`Could not add the voice: ${await errorMessage(response)}`);
      const voice = await response.json();
      await loadVoices(voice.id);
      el.cloneForm.reset();
      el.cloneStatus.textContent = `Added the voice "${voice.name}" (id ${voice.id}); it is selected above.`;
    } catch (err) {
      el.cloneStatus.textContent = "The voice was not added.";
      showError(describe(err));
    } finally {
      el.cloneSubmit.disabled = false;
    }
  }

  // ------------------------------------------------------------------------------------------------- tabs
  // "Speech" and "Long text": the WAI-ARIA tabs pattern (arrow keys, Home and End move between the tabs; only
  // the chosen tab is in the Tab order). The chosen tab is kept in the address (#long-text) so a reload keeps it.
  const TAB_HASHES = { "tab-speech": "", "tab-jobs": "#long-text" };

  function selectTab(tab, focus = false) {
    for (const other of el.tabs) {
      const chosen = other === tab;
      other.setAttribute("aria-selected", String(chosen));
      other.tabIndex = chosen ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !chosen;
    }
    if (focus) tab.focus();
    const hash = TAB_HASHES[tab.id] || "";
    if (window.location.hash !== hash) {
      history.replaceState(null, "", hash || window.location.pathname + window.location.search);
    }
    document.dispatchEvent(new CustomEvent("chatterbox:tab", { detail: tab.id }));
  }

  function tabKey(event) {
    const at = el.tabs.indexOf(event.currentTarget);
    const moves = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: el.tabs.length - 1 };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const count = el.tabs.length;
    selectTab(el.tabs[(moves[event.key] + count) % count], true);
  }

  function setUpTabs() {
    for (const tab of el.tabs) {
      tab.addEventListener("click", () => selectTab(tab));
      tab.addEventListener("keydown", tabKey);
    }
    const wanted = el.tabs.find((tab) => TAB_HASHES[tab.id] && TAB_HASHES[tab.id] === window.location.hash);
    if (wanted) selectTab(wanted);
  }

  // ------------------------------------------------------------------------------------- shared with jobs.js
  const shared = {
    apiFetch, errorMessage, showError, clearError, describe, currentKey, voiceLabel, PageError,
    variantName,
    models: [], // as in state.models, once the server is ready
    voices: null, // the last /v1/audio/voices list
  };
  window.chatterboxApi = shared;

  // ------------------------------------------------------------------------------------------------ start
  async function start() {
    setUpTabs();
    el.text.addEventListener("input", updateCount);
    for (const slider of sliders()) {
      slider.addEventListener("input", () => showSlider(slider));
      showSlider(slider);
    }
    el.reset.addEventListener("click", resetSliders);
    el.speakForm.addEventListener("submit", speak);
    el.stop.addEventListener("click", stopSpeaking);
    el.cloneForm.addEventListener("submit", cloneVoice);
    el.keyForm.addEventListener("submit", keyEntered);
    el.keyCancel.addEventListener("click", keyCancelled);
    el.forgetKey.addEventListener("click", () => {
      storeKey("");
      el.serverStatus.textContent = "The API key was forgotten; the page asks again when the server needs it.";
    });
    el.model.addEventListener("change", async () => {
      chooseModel();
      try {
        await loadLanguages();
      } catch (err) {
        showError(describe(err));
      }
    });
    el.forgetKey.hidden = !currentKey();
    updateCount();
    try {
      if (!(await waitForModel())) return;
      await Promise.all([loadVoices(), loadLanguages()]);
      document.body.dataset.ready = "true";
    } catch (err) {
      showError(describe(err));
    }
  }

  start();
})();
