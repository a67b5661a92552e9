#!/usr/bin/env bash
# The whole product on an embedded default, from a fresh checkout: set up, train a model,
# replay a held-out session through the pipeline and print the emotion stream.
#
# Where the real corpora are (MELD under [recipe] data_root, $EMOTION_DATA or
# ../shared/data), the model is the quick real recipe: MELD's transcripts for the text
# branch, the FER2013 face network for the video branch (`trainer recipe real --quick`).
# Elsewhere it fetches MELD (`trainer data fetch meld`, SHA-256 checked) into a cache folder,
# $EMOTION_DATA_CACHE or ~/.cache/realtime-emotion/data, and trains on that; offline, or when
# the fetch fails, it says why and falls back to a model of the synthetic corpus alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}   # models come from the `offline` extra
out=${DEMO_DIR:-demo}
bin=.venv/bin
cache=${EMOTION_DATA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/realtime-emotion/data}

real=no root=""
if found=$($bin/trainer recipe real --quick --check 2>&1); then
  echo "--- real corpora found ($(echo $found)): the quick real recipe"
  real=yes
else
  echo "--- $found"
  echo "--- fetching MELD (GPL-3.0, github.com/declare-lab/MELD) into $cache"
  if $bin/trainer data fetch meld --to "$cache"; then   # a failure prints its one-line reason
    real=yes root="recipe.data_root='$cache'"
  fi
fi
if [ $real = yes ]; then
  $bin/trainer ${root:+--set "$root"} recipe real --quick --out "$out/real"
  bundle="$out/real/bundle"
  session="$out/real/synthetic-test"
else
  echo "--- no MELD (the line above says why): falling back to a model of the synthetic corpus alone"
  [ -f "$out/corpus/manifest.jsonl" ] || $bin/trainer synth --out "$out/corpus" --sessions "${DEMO_SESSIONS:-40}" --seed 0
  [ -f "$out/session/manifest.jsonl" ] || $bin/trainer synth --out "$out/session" --sessions 1 --seed 1234
  $bin/trainer fit --data "synthetic:$out/corpus" --out "$out/run"
  $bin/trainer export "$out/run" --out "$out/bundle"
  bundle="$out/bundle"
  session="$out/session"
fi
echo "--- replaying $session/s000.mp4; the emotion stream as it is published:"
$bin/realtime replay "$session/s000.mp4" --model "$bundle" --out "$out/emotions.jsonl"
echo "--- what was said (ground truth of the held-out session):"
$bin/python - "$session/manifest.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    u = json.loads(line)
    if u["file"] == "s000.mp4":
        print(f"{u['start']:7.2f}-{u['end']:7.2f}s  {'+'.join(u['labels']):20s} \"{u['text']}\"")
PY
