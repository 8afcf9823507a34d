"""Several languages at once (the server batches them). Needs the multilingual model for languages other than
English; an English server refuses them with a 400, which is reported and skipped. BASE_URL / API_KEY / OUT."""

import asyncio
import os
import sys
from pathlib import Path

from openai import AsyncOpenAI, BadRequestError

TEXTS = {
    "en": "Good morning, everyone.",
    "fr": "Bonjour à tous.",
    "de": "Guten Morgen zusammen.",
    "ja": "皆さん、おはようございます。",
    "zh": "大家早上好。",
}


async def main() -> int:
    base = os.environ.get("BASE_URL", "http://localhost:8000")
    out = Path(os.environ.get("OUT", "."))
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key=os.environ.get("API_KEY") or "unused")

    async def one(language: str, text: str) -> bool:
        try:
            speech = await client.audio.speech.create(
                model="tts-1", voice="alloy", input=text, extra_body={"language_id": language}
            )
        except BadRequestError as exc:
            print(f"{language}: skipped ({exc})")
            return False
        path = out / f"speech_{language}.mp3"
        path.write_bytes(speech.content)
        print(f"wrote {path}")
        return True

    done = await asyncio.gather(*(one(lang, text) for lang, text in TEXTS.items()))
    return 0 if any(done) else 1


sys.exit(asyncio.run(main()))
