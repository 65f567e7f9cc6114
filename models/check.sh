#!/usr/bin/env bash
# Model-check with Spin: models/notify.pml (virtio EVENT_IDX notification suppression) and
# models/ioreq.pml (the emulated NIC's I/O request protocol).
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

# run VARIANT MODE [MODEL] -> prints pan's output; MODE is safety or liveness; VARIANT may
# name several defines joined by '+' (HOSTILE+BROKEN_NO_OUTSTANDING_CHECK)
run() {
    local variant=$1 mode=$2 model=${3:-$MODEL}
    local dir=$TMP/$(basename "$model" .pml).$1.$2
    local defs=() ccflags=(-O0 -w) panflags=() name
    local IFS_SAVE=$IFS; IFS=+; for name in $variant; do defs+=(-D"$name"); done; IFS=$IFS_SAVE
    mkdir -p "$dir"
    cp "$model" "$dir/model.pml"
    if [ "$mode" = safety ]; then ccflags+=(-DSAFETY); else defs+=(-DLIVENESS); panflags+=(-a); fi
    (
        cd "$dir"
        spin -a "${defs[@]}" model.pml >spin.log 2>&1 || { echo "SPIN-FAILED"; cat spin.log; exit 0; }
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
line() { printf '%-42s %s\n' "$1" "$2"; }
# failed NAME WHY SPIN_OUTPUT: the FAIL line, then Spin's first lines that say what went wrong.
failed() {
    line "$1" "FAIL  $2"
    grep -E 'violated|acceptance cycle|FAILED|too small|out of memory|rror' <<<"$3" | grep -v 'errors: 0' | head -5 | sed 's/^/    /'
}

# ---- the correct protocol: both runs must finish with 0 errors
s_out=$(run "$CORRECT" safety)
l_out=$(run "$CORRECT" liveness)
read -r se ss sd <<<"$(facts "$s_out")"
read -r le ls ld <<<"$(facts "$l_out")"
if sane "$s_out" && sane "$l_out" && [ "$se" = 0 ] && [ "$le" = 0 ]; then
    line "$CORRECT" "PASS  verified, 0 errors: safety $ss states (depth $sd), LTL <>all_consumed $ls states (depth $ld)"
else
    failed "$CORRECT" "expected 0 errors, got safety errors=$se, liveness errors=$le" "$s_out"$'\n'"$l_out"
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
        failed "$v" "expected a lost wake-up, but Spin reported none (safety errors=$se, liveness errors=$le)" "$s_out"$'\n'"$l_out"
        status=1
    fi
    if [ "$v" = "$trail_for" ] && [ -f "$TMP/notify.$v.safety/model.pml.trail" ]; then
        echo "    counterexample for $v (shared accesses only; proc 2 = Producer, 3 = Consumer, 4 = Memory):"
        (cd "$TMP/notify.$v.safety" && spin -D"$v" -t -p model.pml 2>&1) \
            | grep -E 'pbuf[!?]|cbuf[!?]|avail_idx|avail_event|pending|slot\[|start =|len\(|assert|timeout' \
            | sed -e 's/model.pml:[0-9]* (state [0-9]*)//' -e 's/^/    /'
    fi
done

if [ "$status" = 0 ]; then
    echo "notify.pml: OK (correct protocol verified; all ${#BROKEN[@]} broken variants lose a wake-up)"
else
    echo "notify.pml: FAILED" >&2
fi

# ---- ioreq.pml: the protocol against an honest and a hostile device model must verify; each
# broken variant must fail the assertion named with it (safety runs only: a hostile device
# model may block a vCPU forever, which is its right).
IOREQ=$HERE/ioreq.pml
[ -f "$IOREQ" ] || { echo "check.sh: $IOREQ not found" >&2; exit 1; }
ioreq_status=0
for v in CORRECT HOSTILE; do
    out=$(run "$v" safety "$IOREQ")
    read -r e st d <<<"$(facts "$out")"
    if sane "$out" && [ "$e" = 0 ]; then
        line "ioreq $v" "PASS  verified, 0 errors ($st states, depth $d)"
    else
        failed "ioreq $v" "expected 0 errors, got $e" "$out"
        ioreq_status=1
    fi
done
for case in "BROKEN_STATE_BEFORE_FIELDS:got==" "BROKEN_CLEAR_AFTER_SCAN:(done\\[0\\]==" \
    "HOSTILE+BROKEN_NO_OUTSTANDING_CHECK:outstanding\\[t\\]!=0"; do
    v=${case%%:*} expect=${case#*:}
    out=$(run "$v" safety "$IOREQ")
    read -r e st d <<<"$(facts "$out")"
    hit=$(grep -m1 "assertion violated ($expect" <<<"$out" || true)
    if sane "$out" && [ -n "$hit" ]; then
        line "ioreq $v" "PASS  caught as expected: ${hit#pan:1: } ($st states)"
    else
        failed "ioreq $v" "expected 'assertion violated ($expect...', got errors=$e" "$out"
        ioreq_status=1
    fi
done
if [ "$ioreq_status" = 0 ]; then
    echo "ioreq.pml: OK (protocol verified against honest and hostile device models; all 3 broken variants caught)"
else
    echo "ioreq.pml: FAILED" >&2
    status=1
fi
exit "$status"
