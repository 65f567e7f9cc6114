#!/usr/bin/env bash
# Model-check models/notify.pml (virtio EVENT_IDX notification suppression) with Spin.
#
#   models/check.sh                 check every variant; exit 0 only if the correct protocol
#                                   verifies with 0 errors AND every broken variant is caught
#   models/check.sh --trail NAME    also print the counterexample Spin found for variant NAME
#                                   (e.g. BROKEN_NO_RECHECK)
#
# Each variant is checked twice: a safety run (assertions + invalid end states, with the
# Watchdog asserting at every terminal state that all items were consumed) and a liveness
# run (pan -a against `ltl all_consumed { <> (ncons == N) }`).  pan is generated and
# compiled in a temporary directory that is removed on exit; nothing is written to the repo.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
MODEL=$HERE/notify.pml
CORRECT=CORRECT
BROKEN=(BROKEN_NO_RECHECK BROKEN_CHECK_BEFORE_PUBLISH BROKEN_NO_FENCE_PRODUCER BROKEN_NO_FENCE_CONSUMER BROKEN_EVENT_OFF_BY_ONE)

trail_for=
case "${1:-}" in
    "") ;;
    --trail) trail_for=${2:?usage: $0 [--trail VARIANT]} ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--trail VARIANT]" >&2; exit 2 ;;
esac

command -v spin >/dev/null || { echo "check.sh: spin (the Spin model checker) is not installed: run ./run.sh setup (or: apt-get install -y spin)" >&2; exit 1; }
command -v gcc >/dev/null || { echo "check.sh: gcc is not installed (needed to compile Spin's verifier): run ./run.sh setup (or: apt-get install -y gcc)" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "check.sh: $MODEL not found" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sluice-spin.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
LIMIT=()
command -v timeout >/dev/null && LIMIT=(timeout 50)

# run VARIANT MODE -> prints pan's output; MODE is safety or liveness
run() {
    local variant=$1 mode=$2 dir=$TMP/$1.$2
    local defs=(-D"$variant") ccflags=(-O0 -w) panflags=()
    mkdir -p "$dir"
    cp "$MODEL" "$dir/notify.pml"
    if [ "$mode" = safety ]; then ccflags+=(-DSAFETY); else defs+=(-DLIVENESS); panflags+=(-a); fi
    (
        cd "$dir"
        spin -a "${defs[@]}" notify.pml >spin.log 2>&1 || { echo "SPIN-FAILED"; cat spin.log; exit 0; }
        gcc "${ccflags[@]}" -o pan pan.c >gcc.log 2>&1 || { echo "GCC-FAILED"; cat gcc.log; exit 0; }
        "${LIMIT[@]}" ./pan "${panflags[@]}" 2>&1 || true
    )
}

# facts pan-output -> "errors states depth"
facts() {
    local errors states depth
    errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' <<<"$1" | head -1)
    states=$(sed -n 's/^ *\([0-9]*\) states, stored.*/\1/p' <<<"$1" | head -1)
    depth=$(sed -n 's/.*depth reached \([0-9]*\).*/\1/p' <<<"$1" | head -1)
    echo "${errors:-?} ${states:-?} ${depth:-?}"
}

# a run is usable only if pan finished its search (no tool failure, no truncated depth)
sane() {
    ! grep -qE 'SPIN-FAILED|GCC-FAILED|max search depth too small|out of memory|search not completed' <<<"$1" \
        && grep -q 'errors: ' <<<"$1"
}

status=0
line() { printf '%-28s %s\n' "$1" "$2"; }

# ---- the correct protocol: both runs must finish with 0 errors
s_out=$(run "$CORRECT" safety)
l_out=$(run "$CORRECT" liveness)
read -r se ss sd <<<"$(facts "$s_out")"
read -r le ls ld <<<"$(facts "$l_out")"
if sane "$s_out" && sane "$l_out" && [ "$se" = 0 ] && [ "$le" = 0 ]; then
    line "$CORRECT" "PASS  verified, 0 errors: safety $ss states (depth $sd), LTL <>all_consumed $ls states (depth $ld)"
else
    line "$CORRECT" "FAIL  expected 0 errors, got safety errors=$se, liveness errors=$le"
    grep -E 'violated|acceptance cycle|FAILED|too small|out of memory|rror' <<<"$s_out"$'\n'"$l_out" | head -5 | sed 's/^/    /'
    status=1
fi

# ---- every broken variant: the lost wake-up must be found by both runs
for v in "${BROKEN[@]}"; do
    s_out=$(run "$v" safety)
    l_out=$(run "$v" liveness)
    read -r se ss sd <<<"$(facts "$s_out")"
    read -r le ls ld <<<"$(facts "$l_out")"
    s_hit=$(sed -n 's/.*assertion violated (\(ncons==[0-9]*\)) (at depth \([0-9]*\)).*/assert(\1) fails at depth \2/p' <<<"$s_out" | head -1)
    if sane "$s_out" && sane "$l_out" && [ -n "$s_hit" ] && grep -q 'acceptance cycle' <<<"$l_out"; then
        line "$v" "PASS  lost wake-up found as expected: Watchdog $s_hit ($ss states); LTL <>all_consumed violated (acceptance cycle, $ls states)"
    else
        line "$v" "FAIL  expected a lost wake-up, but Spin reported none (safety errors=$se, liveness errors=$le)"
        grep -E 'violated|FAILED|too small|out of memory|rror' <<<"$s_out"$'\n'"$l_out" | grep -v 'errors: 0' | head -5 | sed 's/^/    /'
        status=1
    fi
    if [ "$v" = "$trail_for" ] && [ -f "$TMP/$v.safety/notify.pml.trail" ]; then
        echo "    counterexample for $v (shared accesses only; proc 2 = Producer, 3 = Consumer, 4 = Memory):"
        (cd "$TMP/$v.safety" && spin -D"$v" -t -p notify.pml 2>&1) \
            | grep -E 'pbuf[!?]|cbuf[!?]|avail_idx|avail_event|pending|slot\[|start =|len\(|assert|timeout' \
            | sed -e 's/notify.pml:[0-9]* (state [0-9]*)//' -e 's/^/    /'
    fi
done

if [ "$status" = 0 ]; then
    echo "notify.pml: OK (correct protocol verified; all ${#BROKEN[@]} broken variants lose a wake-up)"
else
    echo "notify.pml: FAILED" >&2
fi
exit "$status"
