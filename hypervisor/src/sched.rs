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
}
