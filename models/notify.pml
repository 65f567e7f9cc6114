/*
 * notify.pml -- virtio-style notification suppression (VIRTIO_F_EVENT_IDX) on one
 * direction of a sluice para-virtual ring: no wake-up is ever lost, and every item is
 * consumed exactly once.  See models/README.md for the mapping to the Rust code
 * (shared-abi/src/virtq.rs: `should_notify_*`, `enable_notify`).
 *
 * One model, several variants chosen with -D (spin -a -DVARIANT notify.pml):
 *   (none)                       the correct protocol: must verify with 0 errors
 *   BROKEN_NO_RECHECK            consumer writes avail_event and goes to sleep without
 *                                re-reading avail_idx
 *   BROKEN_CHECK_BEFORE_PUBLISH  producer reads avail_event (decides) before publishing
 *                                avail_idx
 *   BROKEN_NO_FENCE_PRODUCER     producer omits the full barrier between publishing
 *                                avail_idx and reading avail_event
 *   BROKEN_NO_FENCE_CONSUMER     consumer omits the full barrier between writing
 *                                avail_event and re-reading avail_idx
 *   BROKEN_EVENT_OFF_BY_ONE      consumer writes avail_event = index of the last item it
 *                                consumed, instead of the index of the next one it expects
 * Memory model:
 *   (default)  TSO: each side's plain stores go through its own FIFO store buffer that
 *              a Memory process drains at arbitrary moments; a full barrier waits until
 *              the own buffer is empty.  Loads read memory (no side reads a location it
 *              stores itself, so store-to-load forwarding never matters).
 *   SC         stores go straight to memory (sequential consistency); the barriers
 *              are then no-ops.
 * Properties:
 *   (default)  safety: assertions (exactly once, right item) and, at every terminal
 *              state, a Watchdog asserting that everything produced was consumed (a
 *              terminal state with a sleeping consumer and unconsumed items IS a lost
 *              wake-up: nothing can ever wake it again).  Invalid end states are also
 *              reported by pan.
 *   LIVENESS   the LTL property `<> all_consumed` instead of the Watchdog (pan -a).
 *
 * Indices are real free-running u16 (wrap-around by & 65535); the start index is chosen
 * nondeterministically among 65532..65535 and 0, so the wrap happens after 4, 3, 2, 1 or
 * no published items.
 */

#ifndef N
#define N       4               /* items produced in total; also the ring size (no slot reuse),
                                   so it must be a power of 2: 2 or 4 */
#endif
#define RING    N               /* data slots; index -> slot is idx & (RING-1), RING a power of 2 */
#define AIDX    255             /* store-buffer address of avail_idx (slots are 0..RING-1) */

#define U16(x)  ((x) & 65535)
/* vring_need_event(event, new, old): (u16)(new - event - 1) < (u16)(new - old) */
#define NEED_EVENT(ev, nw, od)  (U16((nw) - (ev) - 1) < U16((nw) - (od)))

/* ---- shared memory ---- */
int  avail_idx;                 /* written by producer (release), read by consumer */
int  avail_event;               /* written by consumer, read by producer */
byte slot[RING];                /* item data; 0 = never written */
bit  pending;                   /* event-channel pending bit of the consumer's port */

/* ---- bookkeeping for the properties (not part of the protocol) ---- */
int  start;                     /* initial value of every index */
byte ncons;                     /* items consumed so far */
byte got[N + 1];                /* got[k]: how often item k was consumed */

/* ---- memory model ---- */
#ifdef SC
#define P_STORE(a, v)  pwrite(a, v)
#define C_STORE_EVENT(v)  avail_event = v
#define P_DRAINED      true
#define C_DRAINED      true
#else
chan pbuf = [2 * N] of { byte, int };   /* producer's store buffer: (address, value) */
chan cbuf = [2] of { int };             /* consumer's store buffer: avail_event values */
#define P_STORE(a, v)  pbuf!a, v
#define C_STORE_EVENT(v)  cbuf!v
#define P_DRAINED      (len(pbuf) == 0)
#define C_DRAINED      (len(cbuf) == 0)
#endif

/* full barrier (smp_mb / dmb ish / fence(SeqCst)): wait until own stores are visible */
#ifdef BROKEN_NO_FENCE_PRODUCER
#define P_FENCE        skip
#else
#define P_FENCE        P_DRAINED
#endif
#ifdef BROKEN_NO_FENCE_CONSUMER
#define C_FENCE        skip
#else
#define C_FENCE        C_DRAINED
#endif

inline pwrite(a, v) {
    if
    :: a == AIDX -> avail_idx = v
    :: else -> slot[a] = v
    fi
}

#ifndef SC
/* drains the store buffers, one store at a time, in FIFO order per side */
proctype Memory() {
    byte a; int v;
end:
    do
    :: atomic { pbuf?a, v -> pwrite(a, v); a = 0; v = 0 }
    :: atomic { cbuf?v -> avail_event = v; v = 0 }
    od
}
#endif

/* event-channel send: a hypercall (a full barrier); sets the pending bit, a no-op if set */
inline notify() {
    atomic { P_DRAINED -> pending = 1 }
}

/* front-end: publishes N items in batches of 1 or 2 */
proctype Producer(int idx) {
    int old, ev;
    byte k = 0;                 /* items written so far; item k+1 goes to index start+k */
    bit kick;

    do
    :: k == N -> break
    :: k < N ->
        old = idx;
        P_STORE(idx & (RING - 1), k + 1); idx = U16(idx + 1); k++;
        if
        :: k < N -> P_STORE(idx & (RING - 1), k + 1); idx = U16(idx + 1); k++
        :: true
        fi;
#ifdef BROKEN_CHECK_BEFORE_PUBLISH
        P_FENCE;
        ev = avail_event;
        kick = NEED_EVENT(ev, idx, old);
        P_STORE(AIDX, idx);     /* publish avail_idx (release) -- too late */
#else
        P_STORE(AIDX, idx);     /* publish avail_idx (release) */
        P_FENCE;                /* full barrier */
        ev = avail_event;
        kick = NEED_EVENT(ev, idx, old);
#endif
        if
        :: kick -> notify()
        :: else -> skip
        fi;
        ev = 0; old = 0; kick = 0
    od
}

/* back-end: sleeps on its pending bit, drains, re-arms with avail_event, re-checks */
proctype Consumer(int last) {
    int seen;
    byte v;

end_sleep:
    /* blocked until pending; take it (atomic RMW on the event page: a full barrier) */
    atomic { pending && C_DRAINED -> pending = 0 }
drain:
    seen = avail_idx;           /* acquire */
    do
    :: last != seen ->
        v = slot[last & (RING - 1)];
        assert(v == U16(last - start) + 1);     /* the item published at this index */
        assert(got[v] == 0);                    /* ... consumed for the first time */
        d_step { got[v]++; ncons++; last = U16(last + 1); v = 0 }
    :: else -> break
    od;
    seen = 0;
#ifdef BROKEN_EVENT_OFF_BY_ONE
    C_STORE_EVENT(U16(last - 1));
#else
    C_STORE_EVENT(last);        /* avail_event = last: "notify me when item `last` arrives" */
#endif
#ifdef BROKEN_NO_RECHECK
    goto end_sleep
#else
    C_FENCE;                    /* full barrier */
    if
    :: avail_idx != last -> goto drain      /* raced with the producer: drain again */
    :: else -> goto end_sleep
    fi
#endif
}

#ifndef LIVENESS
/* runs only when nothing else can move, i.e. in every terminal state */
active proctype Watchdog() {
    timeout -> assert(ncons == N)
}
#else
ltl all_consumed { <> (ncons == N) }
#endif

init {
    atomic {
        if
        :: start = 65532
        :: start = 65533
        :: start = 65534
        :: start = 65535
        :: start = 0
        fi;
        avail_idx = start;
        avail_event = start;
        run Producer(start);
        run Consumer(start);
#ifndef SC
        run Memory()
#endif
    }
}
