#!/usr/bin/env bash
# The whole product on an embedded default, from a fresh checkout:
# set up, generate a synthetic corpus and a held-out session, train the student,
# export a bundle, replay the session through the pipeline and print the emotion stream.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}   # models come from the `offline` extra
out=${DEMO_DIR:-demo}
bin=.venv/bin

[ -f "$out/corpus/manifest.jsonl" ] || $bin/trainer synth --out "$out/corpus" --sessions "${DEMO_SESSIONS:-40}" --seed 0
[ -f "$out/session/manifest.jsonl" ] || $bin/trainer synth --out "$out/session" --sessions 1 --seed 1234
$bin/trainer fit --data "synthetic:$out/corpus" --out "$out/run"
$bin/trainer export "$out/run" --out "$out/bundle"
echo "--- replaying $out/session/s000.mp4; the emotion stream as it is published:"
$bin/realtime replay "$out/session/s000.mp4" --model "$out/bundle" --out "$out/emotions.jsonl"
echo "--- what was said (ground truth of the held-out session):"
$bin/python - "$out/session/manifest.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    u = json.loads(line)
    print(f"{u['start']:7.2f}-{u['end']:7.2f}s  {'+'.join(u['labels']):20s} \"{u['text']}\"")
PY
