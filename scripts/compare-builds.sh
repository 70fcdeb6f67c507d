#!/bin/bash
# Behaviour guard for refactors: two armory binaries (before and after) must give bit-identical metrics
# (every column but the two times) for the first 2 epochs of every shipped config that runs on the embedded
# data, and the same samples (naive and cached) for the same seed.
#   scripts/compare-builds.sh OLD_BINARY NEW_BINARY [OUT_DIR]
set -u
old=$1; new=$2; out=${3:-/tmp/compare-builds}
rm -rf "$out"; mkdir -p "$out"
status=0
for m in seed-arm dilated-conv mlp lstm gru wavenet pixelcnn gated-pixelcnn gated-pixelcnn-cond gated-pixelcnn-mixture; do
  for v in old new; do
    bin=$old; [ $v == new ] && bin=$new
    "$bin" train --model $m --epochs 2 --quiet --runs-dir "$out/$v" --name $m > "$out/$v-$m.log" 2>&1
    "$bin" sample --run "$out/$v/$m" -n 16 --seed 0 --method naive --out "$out/$v-$m-naive.png" --raw "$out/$v-$m-naive.csv" > /dev/null
    "$bin" sample --run "$out/$v/$m" -n 16 --seed 0 --out "$out/$v-$m-cached.png" --raw "$out/$v-$m-cached.csv" > /dev/null
  done
  a=$(cut -d, -f1-5 "$out/old/$m/metrics.csv" | md5sum); b=$(cut -d, -f1-5 "$out/new/$m/metrics.csv" | md5sum)
  same() { cmp -s "$1" "$2" && echo same || { status=1; echo DIFFERENT; }; }
  metrics=same; [ "$a" == "$b" ] || { metrics=DIFFERENT; status=1; }
  echo "$m: metrics $metrics, naive samples $(same "$out/old-$m-naive.csv" "$out/new-$m-naive.csv"), cached samples $(same "$out/old-$m-cached.csv" "$out/new-$m-cached.csv")"
done
# A run directory written by the old binary, read by the new one.
echo "old run, old binary: $("$old" eval --run "$out/old/seed-arm" --json)"
echo "old run, new binary: $("$new" eval --run "$out/old/seed-arm" --json)"
exit $status
