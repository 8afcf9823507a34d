"""Upload a reference clip as a voice, list voices, speak with it, and delete it (unless --keep).
Usage: python clone_voice.py CLIP.wav [--name NAME] [--keep]. BASE_URL / API_KEY / OUT as in the other examples."""

import argparse
import os
import sys
from pathlib import Path

import httpx

parser = argparse.ArgumentParser()
parser.add_argument("clip", type=Path)
parser.add_argument("--name", default="example-voice")
parser.add_argument("--keep", action="store_true")
args = parser.parse_args()
base = os.environ.get("BASE_URL", "http://localhost:8000")
out = Path(os.environ.get("OUT", "."))
headers = {"Authorization": f"Bearer {os.environ['API_KEY']}"} if os.environ.get("API_KEY") else {}

with httpx.Client(base_url=base, headers=headers, timeout=300) as http:
    created = http.post("/v1/audio/voices", data={"name": args.name, "consent": "yes"},
                        files={"audio_sample": (args.clip.name, args.clip.read_bytes())})
    if created.status_code != 201:
        sys.exit(f"upload failed: {created.status_code} {created.text}")
    voice = created.json()["id"]
    print(f"uploaded voice {voice!r}")
    print("voices:", ", ".join(v["id"] for v in http.get("/v1/audio/voices").json()["voices"]))
    audio = http.post("/v1/audio/speech", json={"model": "tts-1", "voice": voice, "input": "This is my cloned voice."})
    audio.raise_for_status()
    (out / f"{voice}.mp3").write_bytes(audio.content)
    print(f"wrote {out / f'{voice}.mp3'}")
    if not args.keep:
        http.delete(f"/v1/audio/voices/{voice}").raise_for_status()
        print(f"deleted voice {voice!r}")
