#!/usr/bin/env bash
# On the GPU machine, once the parts are in /root/stage (BENCHMARKS.md, "Device staging"): issue 20's headline
# report (benchmarks/headline.py), the server as users start it, in three device calls of under 9 minutes each:
#   bash benchmarks/device/headline.sh part1   # English: cold start, first bytes at 1 and 16, 64 concurrent, warm
#                                              # start, T3 for one stream, the paragraph           -> $OUT/part1.json
#   bash benchmarks/device/headline.sh part2   # Turbo at 64 concurrent, then S3Gen alone        -> $OUT/part2.json
#   bash benchmarks/device/headline.sh part3   # multilingual, preset low: peak GPU memory       -> $OUT/part3.json
# then here: python -m benchmarks.headline merge --parts part1.json part2.json part3.json --out-dir benchmarks/results
# Extra arguments go to headline.py (e.g. --no-token-cap with real weights). Logs: $OUT/partN-log.txt, and each
# server's log in $OUT/partN-logs/. The caches stay on the machine (/root/headline-work/partN).
set -uo pipefail
part="${1:?usage: headline.sh part1|part2|part3 [headline.py arguments]}"
shift
source benchmarks/device/prepare.sh
# prepare.sh keeps vLLM in-process for the other benchmarks; the headline's server runs with vLLM's default, and
# headline.py removes the variable from the server's environment itself
for variant in turbo multilingual; do
  if { [ "$part" = part2 ] && [ $variant = turbo ]; } || { [ "$part" = part3 ] && [ $variant = multilingual ]; }; then
    [ -e /root/ckpt/$variant/.done ] || {
      python3 -m chatterbox_vllm.cli make-checkpoint --variant $variant --size full --seed 0 --out /root/ckpt/$variant &&
        touch /root/ckpt/$variant/.done
    } || exit 1
  fi
done
case "$part" in
  part1) names=(english) ;;
  part2) names=(turbo s3gen) ;;
  part3) names=(multilingual) ;;
  *) echo "unknown part $part"; exit 2 ;;
esac
echo "start $(date +%T)"
# The call's 10 minutes less install and checkpoints; a part cut short still writes what it measured
work=/root/headline-work/$part
timeout -s TERM "${HEADLINE_TIMEOUT_S:-480}" python3 -m benchmarks.headline part "${names[@]}" \
  --model /root/ckpt/english --turbo-model /root/ckpt/turbo --multilingual-model /root/ckpt/multilingual \
  --preset high --work "$work" --out "$OUT/$part.json" "$@" > "$OUT/$part-log.txt" 2>&1
echo "headline $part rc=$? at $(date +%T)"
mkdir -p "$OUT/$part-logs" && cp "$work"/*.log "$work"/*.json "$OUT/$part-logs/" 2>/dev/null
grep -E '^(server ready|english|turbo|multilingual|s3gen) ' "$OUT/$part-log.txt" | cut -c1-1500
tail -5 "$OUT/$part-log.txt" | cut -c1-1500
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
