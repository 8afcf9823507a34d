"""Turn a text, Markdown or EPUB file into an audiobook with a long-form job: upload it, follow the job's progress
events, then download the audio (m4b with chapters by default) and its WebVTT and SRT subtitles.
Usage: python long_form_job.py BOOK.(txt|md|epub) [--voice alloy] [--format m4b] [--keep].
BASE_URL / API_KEY / OUT as in the other examples. The job is deleted at the end unless --keep."""

import argparse
import json
import os
import sys
from pathlib import Path

import httpx

parser = argparse.ArgumentParser()
parser.add_argument("book", type=Path)
parser.add_argument("--voice", default="alloy")
parser.add_argument("--format", default="m4b", choices=["m4b", "mp3", "opus", "aac", "flac", "wav"])
parser.add_argument("--keep", action="store_true", help="keep the job on the server")
args = parser.parse_args()
base = os.environ.get("BASE_URL", "http://localhost:8000")
out = Path(os.environ.get("OUT", "."))
headers = {"Authorization": f"Bearer {os.environ['API_KEY']}"} if os.environ.get("API_KEY") else {}
jobs = "/v1/audio/speech/jobs"

with httpx.Client(base_url=base, headers=headers, timeout=httpx.Timeout(60, read=None)) as http:
    created = http.post(jobs, data={"model": "tts-1", "voice": args.voice, "response_format": args.format},
                        files={"file": (args.book.name, args.book.read_bytes())})
    if created.status_code != 202:
        sys.exit(f"the job was refused: {created.status_code} {created.text}")
    job = created.json()
    print(f"job {job['id']}: {job['pieces_total']} pieces, {len(job['chapters'])} chapters")
    # Progress as server-sent events: one per finished piece, then the job's end.
    with http.stream("GET", f"{jobs}/{job['id']}/events") as events:
        for line in events.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            job = event["job"]
            if event["type"] == "job.piece":
                eta = job["eta_seconds"]
                print(f"  {job['pieces_done']}/{job['pieces_total']} pieces, {job['audio_seconds']:.1f} s of audio"
                      + (f", about {eta:.0f} s left" if eta is not None else ""))
            elif event["type"] != "job.snapshot":
                break
    if job["status"] != "completed":
        sys.exit(f"the job ended {job['status']}: {job['error']}")
    stem = out / args.book.stem
    audio = http.get(f"{jobs}/{job['id']}/audio")
    audio.raise_for_status()
    Path(f"{stem}.{args.format}").write_bytes(audio.content)
    for fmt in ("vtt", "srt"):
        subtitles = http.get(f"{jobs}/{job['id']}/subtitles", params={"format": fmt})
        subtitles.raise_for_status()
        Path(f"{stem}.{fmt}").write_text(subtitles.text)
    print(f"wrote {stem}.{args.format} ({job['audio_seconds']:.1f} s), {stem}.vtt and {stem}.srt")
    if not args.keep:
        http.delete(f"{jobs}/{job['id']}").raise_for_status()
        print(f"deleted job {job['id']}")
