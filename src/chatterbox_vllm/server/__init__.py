"""The OpenAI-compatible HTTP server.

Where things live (each module's docstring says what it owns and what it leaves to others):

* `app.py`: the FastAPI app; starts the `ModelLoader` in the background and mounts the routes.
* `routes/`: one module per resource (`speech`, `models`, `voices`, `health`, `page`); HTTP in, typed bodies out.
* `schemas.py`: every typed body: the speech request and each JSON answer (the OpenAPI schema documents them).
* `speech_job.py`: one speech request from its validated body to the last byte (`SpeechJob`).
* `registry.py`: the served models (`ModelRegistry` of `ServedModel`s, each `LoadedModel` once ready) and which one a
  request names.
* `model_loader.py`: loading the models (VRAM plan, one after another) and what they share (`ModelLoader`).
* `synthesis.py`: one model's synthesis pipeline, text to audio chunks (`Synthesizer`).
* `admission.py`: the server's places for speech requests in progress (429 beyond them).
* `s3gen_worker.py` / `s3gen_process.py`: S3Gen's batching vocoder worker, as a thread or as a process of its own.
* `audio.py` (encoding), `voices.py` (the voice library), `limits.py` (body sizes), `validation.py` (422 -> 400
  wording), `errors.py` (OpenAI's error shape), `auth.py`, `metrics.py`, `startup.py` (start-up log lines).
"""
