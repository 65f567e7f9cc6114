//! The vCPU scheduler's policy: a global round-robin run queue shared by all pCPUs.
//!
//! The arch layer does the mechanics (saving and loading contexts, timers, WFI); this module only
//! decides which vCPU runs, and when a blocked vCPU's deadline has passed. A vCPU that keeps
//! running is preempted at the end of its time slice and goes to the back of the queue, so a
//! vCPU spinning forever cannot starve the others.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

pub type VcpuId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Waiting in the run queue.
    Runnable,
    /// On pCPU `pcpu`.
    Running { pcpu: usize },
    /// Executed WFI; wakes at `deadline` (counter ticks) if given, or when an interrupt arrives.
    Blocked { deadline: Option<u64> },
    /// Waiting for the answer to a trapped device access (an I/O request to a device model):
    /// only that answer wakes it ([`Scheduler::wake_io`]); interrupts and deadlines do not,
    /// since the instruction that trapped has not completed.
    WaitingIo,
    /// A restarted VM's first vCPU held back until `until` (counter ticks): the back-off of a
    /// driver domain that keeps crashing. Only the time wakes it, not an interrupt.
    Delayed { until: u64 },
    /// Powered off (never started, PSCI CPU_OFF, or its VM stopped).
    Off,
}

#[derive(Default)]
pub struct Scheduler {
    states: Vec<RunState>,
    queue: VecDeque<VcpuId>,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a vCPU, initially off.
    pub fn add(&mut self) -> VcpuId {
        self.states.push(RunState::Off);
        self.states.len() - 1
    }

    pub fn state(&self, id: VcpuId) -> RunState {
        self.states[id]
    }

    /// Blocked or off → runnable. Returns false if it was already runnable or running.
    pub fn wake(&mut self, id: VcpuId) -> bool {
        match self.states[id] {
            RunState::Blocked { .. } | RunState::Off => {
                self.states[id] = RunState::Runnable;
                self.queue.push_back(id);
                true
            }
            RunState::Runnable
            | RunState::Running { .. }
            | RunState::WaitingIo
            | RunState::Delayed { .. } => false,
        }
    }

    /// An off vCPU becomes runnable at `until` (counter ticks), not before.
    pub fn start_at(&mut self, id: VcpuId, until: u64) {
        self.states[id] = RunState::Delayed { until };
    }

    /// A running vCPU waits for the answer to its I/O request.
    pub fn block_io(&mut self, id: VcpuId) {
        self.states[id] = RunState::WaitingIo;
    }

    /// The answer to `id`'s I/O request is in: waiting → runnable. False in any other state.
    pub fn wake_io(&mut self, id: VcpuId) -> bool {
        if self.states[id] != RunState::WaitingIo {
            return false;
        }
        self.states[id] = RunState::Runnable;
        self.queue.push_back(id);
        true
    }

    /// Takes the next runnable vCPU for `pcpu`.
    pub fn pick(&mut self, pcpu: usize) -> Option<VcpuId> {
        while let Some(id) = self.queue.pop_front() {
            // Entries can be stale if a vCPU was stopped while queued.
            if self.states[id] == RunState::Runnable {
                self.states[id] = RunState::Running { pcpu };
                return Some(id);
            }
        }
        None
    }

    /// A running vCPU gives up its pCPU but stays runnable (time slice over, or yield).
    pub fn preempt(&mut self, id: VcpuId) {
        debug_assert!(matches!(self.states[id], RunState::Running { .. }));
        self.states[id] = RunState::Runnable;
        self.queue.push_back(id);
    }

    pub fn block(&mut self, id: VcpuId, deadline: Option<u64>) {
        self.states[id] = RunState::Blocked { deadline };
    }

    pub fn stop(&mut self, id: VcpuId) {
        self.states[id] = RunState::Off;
    }

    pub fn has_runnable(&self) -> bool {
        self.queue
            .iter()
            .any(|&id| self.states[id] == RunState::Runnable)
    }

    /// Makes every blocked vCPU whose deadline has passed runnable; returns how many woke.
    /// Runs on every trap, so it allocates nothing.
    pub fn wake_expired(&mut self, now: u64) -> usize {
        let mut woken = 0;
        for id in 0..self.states.len() {
            let due = match self.states[id] {
                RunState::Blocked { deadline: Some(d) } => d <= now,
                RunState::Delayed { until } => until <= now,
                _ => false,
            };
            if due {
                self.states[id] = RunState::Runnable;
                self.queue.push_back(id);
                woken += 1;
            }
        }
        woken
    }

    /// The earliest deadline among blocked vCPUs (when an idle pCPU must wake up).
    pub fn earliest_deadline(&self) -> Option<u64> {
        self.states
            .iter()
            .filter_map(|s| match s {
                RunState::Blocked { deadline } => *deadline,
                RunState::Delayed { until } => Some(*until),
                _ => None,
            })
            .min()
    }
}

/// Who brings a vCPU that was just woken (blocked → runnable) onto a pCPU.
///
/// Under QEMU every pCPU is a host thread, and kicking an idle pCPU means waking that thread:
/// on a busy host the woken thread waits for the host scheduler (its next tick, several ms),
/// and then for QEMU's big lock at its first GIC access. The common waker, a vCPU that sends
/// an event and then sleeps in WFI (a front-end that published a frame, the driver domain that
/// delivered one), frees its own pCPU within microseconds, and that pCPU's thread is already
/// running. So the kick is deferred: the woken vCPU waits in the run queue for
/// [`KICK_DELAY_US`]; if the waker blocks first, its pCPU picks the woken vCPU with no thread
/// woken at all, and only if it does not are the idle pCPUs kicked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeKick {
    /// The waker is this pCPU's idle loop, which picks the vCPU itself on its next turn.
    None,
    /// A vCPU runs here: kick the idle pCPUs at the deadline unless this pCPU is free by then.
    Deferred,
}

/// How long a woken vCPU waits for its waker's pCPU before the idle pCPUs are kicked, in
/// microseconds: longer than a sender takes from its event to its WFI under TCG (about
/// 100 us measured per wake-up), short next to a time slice.
pub const KICK_DELAY_US: u64 = 200;

/// See [`WakeKick`]: `waker_idle` is whether the waking pCPU is in its idle loop (an
/// interrupt taken there, or a deadline) rather than running a vCPU.
pub fn wake_kick(waker_idle: bool) -> WakeKick {
    if waker_idle {
        WakeKick::None
    } else {
        WakeKick::Deferred
    }
}

/// What the EL2 timer of a pCPU that runs a vCPU means when it fires at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerTick {
    /// A deferred kick is due: wake the idle pCPUs.
    pub kick: bool,
    /// The running vCPU's slice is over, or a blocked vCPU's deadline has passed: the usual
    /// preemption check (it keeps its pCPU if nothing else is runnable).
    pub preempt: bool,
}

/// Sorts out why the timer fired: `kick_at` is the pending deferred kick (if any), `slice_end`
/// the end of the running vCPU's slice, `deadline` the earliest blocked vCPU's deadline.
pub fn timer_tick(
    now: u64,
    kick_at: Option<u64>,
    slice_end: u64,
    deadline: Option<u64>,
) -> TimerTick {
    TimerTick {
        kick: kick_at.is_some_and(|at| at <= now),
        preempt: slice_end <= now || deadline.is_some_and(|d| d <= now),
    }
}

/// When the EL2 timer of a pCPU running a vCPU must fire next: the slice end, the earliest
/// blocked deadline or the pending kick, whichever comes first.
pub fn next_timer(slice_end: u64, deadline: Option<u64>, kick_at: Option<u64>) -> u64 {
    [Some(slice_end), deadline, kick_at]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(slice_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_with_preemption_lets_everyone_run() {
        let mut s = Scheduler::new();
        let ids: Vec<_> = (0..3).map(|_| s.add()).collect();
        for &id in &ids {
            s.wake(id);
        }
        // One pCPU; vCPU 0 spins forever and is preempted at every tick.
        let mut ran = [0; 3];
        for _ in 0..30 {
            let id = s.pick(0).unwrap();
            ran[id] += 1;
            s.preempt(id);
        }
        assert_eq!(ran, [10, 10, 10]);
    }

    #[test]
    fn two_pcpus_never_run_the_same_vcpu() {
        let mut s = Scheduler::new();
        let a = s.add();
        s.wake(a);
        assert_eq!(s.pick(0), Some(a));
        assert_eq!(s.pick(1), None);
        assert_eq!(s.state(a), RunState::Running { pcpu: 0 });
    }

    #[test]
    fn blocked_vcpu_wakes_at_its_deadline() {
        let mut s = Scheduler::new();
        let a = s.add();
        s.wake(a);
        s.pick(0);
        s.block(a, Some(1000));
        assert_eq!(s.earliest_deadline(), Some(1000));
        assert_eq!(s.wake_expired(999), 0);
        assert_eq!(s.pick(0), None);
        assert_eq!(s.wake_expired(1000), 1);
        assert_eq!(s.pick(0), Some(a));
        assert_eq!(s.earliest_deadline(), None);
    }

    #[test]
    fn stopped_vcpu_left_in_queue_is_skipped() {
        let mut s = Scheduler::new();
        let a = s.add();
        let b = s.add();
        s.wake(a);
        s.wake(b);
        s.stop(a);
        assert_eq!(s.pick(0), Some(b));
        assert_eq!(s.pick(1), None);
        assert!(!s.has_runnable());
    }

    #[test]
    fn only_its_answer_wakes_a_vcpu_waiting_for_io() {
        let mut s = Scheduler::new();
        let a = s.add();
        let b = s.add();
        s.wake(a);
        s.wake(b);
        assert_eq!(s.pick(0), Some(a));
        s.block_io(a);
        // An interrupt's wake-up, a passing deadline: still waiting, and not in the queue.
        assert!(!s.wake(a));
        assert_eq!(s.wake_expired(u64::MAX), 0);
        assert_eq!(s.earliest_deadline(), None);
        assert_eq!(s.state(a), RunState::WaitingIo);
        assert_eq!(s.pick(1), Some(b));
        assert_eq!(s.pick(1), None);
        // Its answer: runnable once, then picked.
        assert!(s.wake_io(a));
        assert!(!s.wake_io(a));
        assert_eq!(s.pick(0), Some(a));
        // A stop ends the wait for good.
        s.block_io(a);
        s.stop(a);
        assert!(!s.wake_io(a));
        assert_eq!(s.state(a), RunState::Off);
    }

    #[test]
    fn a_delayed_vcpu_starts_at_its_time_and_not_before() {
        let mut s = Scheduler::new();
        let a = s.add();
        s.start_at(a, 500);
        assert!(!s.wake(a), "an interrupt does not start it early");
        assert_eq!(s.earliest_deadline(), Some(500));
        assert_eq!(s.wake_expired(499), 0);
        assert_eq!(s.pick(0), None);
        assert_eq!(s.wake_expired(500), 1);
        assert_eq!(s.pick(0), Some(a));
    }

    #[test]
    fn wake_is_idempotent() {
        let mut s = Scheduler::new();
        let a = s.add();
        assert!(s.wake(a));
        assert!(!s.wake(a));
        assert_eq!(s.pick(0), Some(a));
        assert_eq!(s.pick(0), None);
    }

    #[test]
    fn a_wake_from_the_idle_loop_kicks_nobody_and_one_from_a_running_vcpu_waits() {
        assert_eq!(wake_kick(true), WakeKick::None);
        assert_eq!(wake_kick(false), WakeKick::Deferred);
    }

    #[test]
    fn the_timer_kicks_only_when_the_kick_is_due_and_preempts_only_at_the_slice_end_or_a_deadline()
    {
        // The kick's deadline alone: kick, keep the running vCPU.
        assert_eq!(
            timer_tick(100, Some(100), 1000, None),
            TimerTick {
                kick: true,
                preempt: false
            }
        );
        // Early (a timer that fired before its time): nothing.
        assert_eq!(
            timer_tick(99, Some(100), 1000, Some(500)),
            TimerTick {
                kick: false,
                preempt: false
            }
        );
        // The slice is over with no kick pending: the usual preemption.
        assert_eq!(
            timer_tick(1000, None, 1000, None),
            TimerTick {
                kick: false,
                preempt: true
            }
        );
        // A blocked vCPU's deadline passed: preemption check too, and the due kick.
        assert_eq!(
            timer_tick(600, Some(200), 1000, Some(500)),
            TimerTick {
                kick: true,
                preempt: true
            }
        );
    }

    #[test]
    fn the_next_timer_is_the_earliest_of_slice_end_deadline_and_kick() {
        assert_eq!(next_timer(1000, None, None), 1000);
        assert_eq!(next_timer(1000, Some(700), None), 700);
        assert_eq!(next_timer(1000, Some(700), Some(300)), 300);
        assert_eq!(next_timer(1000, Some(2000), Some(3000)), 1000);
    }
}
