#!/usr/bin/env bash
# The prepared GPU measurement of benches/PERFORMANCE.md ("The next device call, prepared") as
# one script: a session lent a GPU sends it as it is, and a session without one checks that it
# still starts (flags change between sessions; a step that exits 2 at once wastes a device call).
#
#   bash benches/device-call.sh prepare [BASE]   here: ../shared/device/pack.sh (release and test
#        binaries, Vulkan loader, libglvnd, CIFAR-10, weights into .device/) and a stripped build
#        of BASE (default 61486f5) as .device/sasprune-base, built in target/device-base
#   bash benches/device-call.sh rehearse         here, on the software driver: each step for at
#        most REHEARSE_S seconds (default 40) with this checkout's binaries, after the tuner has
#        tuned a GEMM from a fresh cache directory as on a GPU; a step passes when it ends with 0
#        or is still running at the limit, the PyTorch peer is only compiled (no torch here) and
#        a test step needs its tests/NAME.rs. Exit 1 names the steps that failed.
#   bash benches/device-call.sh steps            prints the steps, one per line
#   bash benches/device-call.sh                  on the device: the device tool's `run` with
#        command "bash benches/device-call.sh", carry [".device"], timeout_s 600. Every step runs
#        through .device/on-gpu.sh (at most STEP_S = 200 s each, all of them CALL_S = 540 s, so
#        that what ran comes back before the tool's limit); summary.txt and run.tar.gz come
#        back. Record what it measured in benches/PERFORMANCE.md and README's speed section.
#   bash benches/device-call.sh report DIR       here, on what came back (DIR holds summary.txt and
#        run.tar.gz): the summary, README's side-by-side tables (`sasprune bench --table`: this
#        build and the base build against the PyTorch peer) and the pipelines' phase rates
set -uo pipefail
script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$script")/.."

# One step per line, in the order they run: what README's speed table needs first (the bench,
# the PyTorch peer, the pipeline's phases, mixed precision on the real driver), then the A/B
# rows, so that a call cut short still brings back the headline. $RES comes back, $DATA is
# CIFAR-10, $PRE the pretrained weights. The first bench tunes (and fills the tuning cache); the
# second is the one to quote. The base build tunes into its own cache. Two steps bring back the
# tuner's cache (after the benches, and at the end): the plans chosen on the card, and any it
# left out (a kernel that crashed or hung there).
steps=(
  'sasprune bench --out $RES/bench.jsonl'
  'sasprune bench --out $RES/bench2.jsonl'
  'cp -r "${XDG_CACHE_HOME:-$HOME/.cache}/sasprune" $RES/tuner-cache-bench'
  'python3 benches/peers/pytorch_resnet32.py --out $RES/peer.jsonl'
  'sasprune --model resnet32 --rate 6.6x --weights $PRE/resnet32.safetensors --data $DATA --schedule quick --outer 4 --retrain-epochs 2 --out $RES/run'
  'sasprune --model resnet32 --rate 6.6x --weights $PRE/resnet32.safetensors --data $DATA --schedule quick --outer 4 --retrain-epochs 2 --precision mixed --out $RES/run-mixed'
  'test mixed_precision'
  'test kernels'
  '.device/sasprune-base --tune-cache /tmp/base-tune.json bench --filter step --out $RES/base.jsonl'
  '.device/sasprune-base --tune-cache /tmp/base-tune.json bench --filter step --out $RES/base2.jsonl'
  'SASPRUNE_BN_FINALIZE=separate sasprune bench --filter step --out $RES/bench-bn-separate.jsonl'
  'sasprune --tune off bench --filter step --out $RES/bench-tune-off.jsonl'
  'SASPRUNE_SUBGROUPS=off sasprune bench --filter batchnorm --out $RES/bench-nosubgroups.jsonl'
  'test grad_places'
  'test memory'
  'cp -r "${XDG_CACHE_HOME:-$HOME/.cache}/sasprune" $RES/tuner-cache'
)

prepare() {
  local base=${1:-61486f5}
  bash ../shared/device/pack.sh || return 1
  # the steps use ResNet-20's and ResNet-32's weights and four test binaries; the others would
  # crowd the 64 MiB carry
  chmod -R u+w .device/pretrained && rm -f .device/pretrained/resnet{44,56}.safetensors
  local bins keep=(sasprune)
  for step in "${steps[@]}"; do [[ $step == test\ * ]] && keep+=("test-${step#test }"); done
  bins=$(mktemp -d) && tar -xJf .device/bin.tar.xz -C "$bins" \
    && tar -cJf .device/bin.tar.xz -C "$bins" "${keep[@]}" && rm -rf "$bins" || return 1
  rm -rf /tmp/device-base && git worktree add -f --detach /tmp/device-base "$base" >/dev/null || return 1
  cargo build --release --quiet --manifest-path /tmp/device-base/Cargo.toml --target-dir target/device-base \
    && strip -o .device/sasprune-base target/device-base/release/sasprune
  local rc=$?
  git worktree remove --force /tmp/device-base
  du -sh .device | sed 's/^/carried: /'
  return $rc
}

rehearse() {
  local limit=${REHEARSE_S:-40} bin failed=() n=0
  bin=$(mktemp -d) && ln -s "$PWD/target/release/sasprune" "$bin/sasprune"
  [[ -x target/release/sasprune ]] || { echo "build first: cargo build --release"; return 1; }
  [[ -x .device/sasprune-base ]] || echo "note: no .device/sasprune-base (run 'prepare'); its steps will fail"
  RES=$(mktemp -d)
  export PATH=$bin:$PATH RES DATA=${DATA:-$PWD/data} PRE=${PRE:-$PWD/../shared/pretrained}
  export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
  # The tuner as on a GPU, on a machine's first run (no cache directory yet): it tunes, keeps its
  # markers and saves its cache, which the copy steps then find. (The steps themselves keep the
  # software driver's fixed plans, so that 40 s reach their rows rather than tuning.)
  export XDG_CACHE_HOME=$RES/cache-home
  local s=$SECONDS verdict=ok
  SASPRUNE_TUNE=on timeout "$limit" sasprune bench --quick --filter "gemm 256" > "$RES/tuner.txt" 2>&1
  if [[ ! -f $XDG_CACHE_HOME/sasprune/tune.json ]] || grep -q "note: could not" "$RES/tuner.txt"; then
    verdict=FAILED; failed+=(tuner); tail -3 "$RES/tuner.txt" | sed 's/^/      /'
  fi
  printf '%-9s %3ds  the tuner from a fresh cache directory\n' "$verdict" $((SECONDS - s))
  for step in "${steps[@]}"; do
    n=$((n + 1))
    local log=$RES/step$n.txt rc s=$SECONDS
    case $step in
      test\ *) [[ -f tests/${step#test }.rs ]]; rc=$? ;;
      python3\ *) python3 -m py_compile "$(awk '{print $2}' <<< "$step")"; rc=$? ;;
      *) timeout "$limit" bash -c "$step" > "$log" 2>&1; rc=$? ;;
    esac
    local verdict=ok
    if [[ $rc -ne 0 && $rc -ne 124 ]]; then verdict=FAILED; failed+=("$n"); fi
    printf '%02d %-6s rc %3d %3ds  %s\n' $n $verdict $rc $((SECONDS - s)) "$step"
    [[ -f $log && $verdict == FAILED ]] && tail -3 "$log" | sed 's/^/      /'
  done
  echo "outputs: $RES"
  [[ ${#failed[@]} -eq 0 ]] || { echo "failed steps: ${failed[*]}"; return 1; }
}

report() {
  local dir=$1 tmp n
  [[ -f $dir/run.tar.gz && -f $dir/summary.txt ]] || { echo "usage: report DIR (with summary.txt and run.tar.gz)"; return 2; }
  [[ -x target/release/sasprune ]] || { echo "build first: cargo build --release"; return 1; }
  tmp=$(mktemp -d) && tar -xzf "$dir/run.tar.gz" -C "$tmp" || return 1
  local files=$tmp/device-run/files
  cat "$dir/summary.txt"
  echo; echo "## This build (bench2) and the PyTorch peer"
  target/release/sasprune bench --table "$files/bench2.jsonl" "$files/peer.jsonl"
  echo; echo "## The base build (base2) and the PyTorch peer"
  target/release/sasprune bench --table "$files/base2.jsonl" "$files/peer.jsonl"
  # the pipelines' logs (numbered as summary.txt numbers them): their phase and epoch rates
  # (step-only images/s) and accuracy
  local line log
  while read -r line; do
    n=${line%% *}
    log=$tmp/device-run/$n.txt
    [[ -f $log ]] || continue
    printf '\n## %s\n' "${line#*: }"
    grep -E 'images/s|top-1|phase|took' "$log" | tail -25
  done < <(grep -E '^[0-9]{2} rc -?[0-9]+ [0-9]+s: sasprune --model ' "$dir/summary.txt")
  echo; echo "(the whole archive: $tmp/device-run)"
}

case ${1:-device} in
  prepare) prepare "${2:-}" ;;
  rehearse) rehearse ;;
  steps) printf '%s\n' "${steps[@]}" ;;
  device)
    [[ -f .device/on-gpu.sh ]] || { echo "no .device/on-gpu.sh: run 'bash benches/device-call.sh prepare' first"; exit 1; }
    # (on-gpu.sh packs what came back in its EXIT trap, which a TERM still runs; a kernel that
    # never finishes ends its step after 60 s of one submission instead of the step's 200 s: no
    # submission of these steps takes a second on the card)
    STEP_S=${STEP_S:-200} SASPRUNE_DEVICE_TIMEOUT=${SASPRUNE_DEVICE_TIMEOUT:-60} \
      timeout -s TERM "${CALL_S:-540}" bash .device/on-gpu.sh "${steps[@]}" ;;
  report) report "${2:-}" ;;
  *) sed -n '2,22p' "$script"; exit 2 ;;
esac
