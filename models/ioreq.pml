/*
 * ioreq.pml -- the emulated NIC's I/O request protocol (shared-abi/src/ioreq.rs): a guest's
 * trapped MMIO access is posted by the hypervisor in the vCPU's slot of the request page, the
 * device model in the driver domain takes it, answers, and signals; the hypervisor then takes
 * the answer and lets the vCPU run.  See models/README.md for the mapping to the Rust code.
 *
 * What is checked, over every interleaving (two vCPUs, R requests each, one device model):
 *   - every request is answered exactly once, with the answer to that request (not a stale
 *     one, not another slot's), and no vCPU stays blocked when the device model is honest;
 *   - with a HOSTILE device model (it writes any state and any data into any slot, at any
 *     time, and signals whenever it likes) the hypervisor still completes only a vCPU that is
 *     waiting, at most once per request.  (A hostile device model may leave a vCPU blocked
 *     forever, or answer garbage: both are its right, as for a real device.)
 *
 * Variants (-D):
 *   (none)                        the protocol as built: must verify with 0 errors
 *   HOSTILE                       the same hypervisor against a scribbling device model: 0 errors
 *   BROKEN_STATE_BEFORE_FIELDS    the hypervisor marks the slot READY before writing the
 *                                 request's fields (a missing Release): a stale request is served
 *   BROKEN_CLEAR_AFTER_SCAN       the device model clears its port's pending bit after scanning
 *                                 the slots instead of before: a request posted in between is
 *                                 never seen (a lost wake-up; the vCPU blocks forever)
 *   HOSTILE + BROKEN_NO_OUTSTANDING_CHECK
 *                                 the hypervisor takes any RESPONSE_READY slot, not only those
 *                                 with a request of its own outstanding: a scribbling device
 *                                 model completes a vCPU that is not waiting
 * Memory model: sequential consistency.  The Release store of the state word (`post`,
 * `respond`) and the Acquire load / compare-and-swap that reads it (`take_request`,
 * `take_response`) are what keep program order across the two sides on Arm; the broken
 * variants swap exactly those orders, so they show each one is needed.
 */

#ifndef R
#define R 2                     /* requests per vCPU */
#endif
#define SLOTS 2

#define NONE            0
#define READY           1
#define IN_PROCESS      2
#define RESPONSE_READY  3

/* The answer an honest device model gives to the request whose offset word is `req`. */
#define ANSWER(req)     ((req) + 100)

/* ---- the request page (one slot per vCPU) ---- */
byte state[SLOTS];
byte offset[SLOTS];             /* the request (its identity: 1 + vcpu * R + k) */
byte data[SLOTS];               /* the answer */

/* ---- event channel: the device model's request port ---- */
bit pending;

/* ---- hypervisor state (its own memory, under its lock) ---- */
bit hv_lock;
byte outstanding[SLOTS];        /* the request posted and not yet completed; 0 = none */
byte done[SLOTS];               /* requests completed per vCPU */

inline lock()   { atomic { hv_lock == 0 -> hv_lock = 1 } }
inline unlock() { hv_lock = 0 }

/* The hypervisor, on the device model's EVTCHN_SEND: takes every answer it is waiting for. */
inline collect() {
    lock();
    t = 0;
    do
    :: t < SLOTS ->
        if
#ifdef BROKEN_NO_OUTSTANDING_CHECK
        :: state[t] == RESPONSE_READY ->
#else
        :: outstanding[t] != 0 && state[t] == RESPONSE_READY ->
#endif
            got = data[t];
            state[t] = NONE;
            assert(outstanding[t] != 0);        /* only a waiting vCPU is completed */
#ifndef HOSTILE
            assert(got == ANSWER(outstanding[t]));   /* its own answer */
#endif
            outstanding[t] = 0;
            done[t]++
        :: else -> skip
        fi;
        t++
    :: else -> break
    od;
    unlock()
}

/* vCPU `s`: traps R times; the hypervisor posts each access and blocks the vCPU until done. */
proctype Vcpu(byte s) {
    byte k = 0;
    byte id;
    do
    :: k < R ->
        lock();
        id = 1 + s * R + k;
        outstanding[s] = id;
#ifdef BROKEN_STATE_BEFORE_FIELDS
        state[s] = READY;
        offset[s] = id;
#else
        offset[s] = id;
        state[s] = READY;
#endif
        pending = 1;
        unlock();
        /* WaitingIo: only a completion ends it. */
        (done[s] > k);
        assert(done[s] == k + 1);               /* completed once, not twice */
        k++
    :: else -> break
    od
}

/* The device model's pass (`EmuPort::serve` -> `devmodel::serve`): take the port's pending
 * bit, answer every READY slot, then one EVTCHN_SEND if anything was answered. */
proctype DeviceModel() {
    byte s, req, t, got;
    bit answered;
end_wait:
    do
    :: pending == 1 ->
#ifndef BROKEN_CLEAR_AFTER_SCAN
        pending = 0;
#endif
        s = 0;
        answered = 0;
        do
        :: s < SLOTS ->
            if
            :: atomic { state[s] == READY -> state[s] = IN_PROCESS } ->
                req = offset[s];
                data[s] = ANSWER(req);
                state[s] = RESPONSE_READY;
                answered = 1
            :: else -> skip
            fi;
            s++
        :: else -> break
        od;
#ifdef BROKEN_CLEAR_AFTER_SCAN
        pending = 0;
#endif
        if
        :: answered -> collect()
        :: else -> skip
        fi
#ifdef HOSTILE
    :: true ->
        /* Scribble anything on any slot, then signal. */
        if
        :: s = 0
        :: s = 1
        fi;
        if
        :: state[s] = NONE
        :: state[s] = READY
        :: state[s] = IN_PROCESS
        :: state[s] = RESPONSE_READY
        fi;
        if
        :: data[s] = 7
        :: data[s] = ANSWER(offset[s])
        fi;
        collect()
#endif
    od
}

#ifndef HOSTILE
/* At a terminal state (nothing can move) every request must have been completed: a blocked
 * vCPU there is blocked forever. */
active proctype Watchdog() {
    timeout -> assert(done[0] == R && done[1] == R)
}
#endif

init {
    atomic {
        run Vcpu(0);
        run Vcpu(1);
        run DeviceModel()
    }
}
