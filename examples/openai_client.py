"""The official OpenAI client against chatterbox-vllm: a whole file, then a streamed one.
BASE_URL (default http://localhost:8000), API_KEY optional, OUT (default .)."""

import os
from pathlib import Path

from openai import OpenAI

base = os.environ.get("BASE_URL", "http://localhost:8000")
out = Path(os.environ.get("OUT", "."))
client = OpenAI(base_url=f"{base}/v1", api_key=os.environ.get("API_KEY") or "unused")

speech = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello from the OpenAI client.")
speech.write_to_file(out / "client.mp3")
print(f"wrote {out / 'client.mp3'}")

with client.audio.speech.with_streaming_response.create(
    model="tts-1", voice="nova", input="This arrives as it is made.", response_format="wav"
) as response:
    response.stream_to_file(out / "client_streamed.wav")
print(f"wrote {out / 'client_streamed.wav'}")
