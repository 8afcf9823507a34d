#!/usr/bin/env bash
# A few speech requests with curl. BASE_URL (default http://localhost:8000), API_KEY optional, OUT (default .).
set -euo pipefail
BASE_URL="${BASE_URL:-http://localhost:8000}"
OUT="${OUT:-.}"
auth=()
[ -n "${API_KEY:-}" ] && auth=(-H "Authorization: Bearer $API_KEY")
speak() {  # format, file
  curl -sSf "${auth[@]}" "$BASE_URL/v1/audio/speech" -H 'Content-Type: application/json' \
    -d "{\"model\":\"tts-1\",\"input\":\"Hello from Chatterbox.\",\"voice\":\"alloy\",\"response_format\":\"$1\"}" -o "$2"
  echo "wrote $2 ($(wc -c < "$2") bytes)"
}
speak mp3 "$OUT/hello.mp3"
speak wav "$OUT/hello.wav"
speak pcm "$OUT/hello.pcm"
curl -sSfN "${auth[@]}" "$BASE_URL/v1/audio/speech" -H 'Content-Type: application/json' \
  -d '{"model":"tts-1","input":"Streaming events.","voice":"alloy","response_format":"pcm","stream_format":"sse"}' \
  > "$OUT/events.txt"
echo "wrote $OUT/events.txt ($(grep -c 'speech.audio.delta' "$OUT/events.txt") audio events)"
grep -q 'speech.audio.done' "$OUT/events.txt"
