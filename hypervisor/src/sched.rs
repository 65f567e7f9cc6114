//! The vCPU scheduler's policy: one run queue shared by all pCPUs, picked by virtual run time.
//!
//! The arch layer does the mechanics (saving and loading contexts, timers, WFI); this module only
//! decides which vCPU runs, which running vCPU gives way to one that wakes, and when a blocked
//! vCPU's deadline has passed.
//!
//! **Fair shares.** Each vCPU has a virtual run time: the counter ticks it has run. A pick takes
//! the runnable vCPU that has run least (the one queued first among equals), so a vCPU that
//! keeps running is preempted at the end of its time slice in favour of the others and cannot
//! starve them. A vCPU that wakes is placed no further than [`Fairness::sleeper_credit`] behind
//! the vCPUs that compete now: sleeping earns a little precedence, never a bank of it (a VM
//! that slept for a minute does not then own a pCPU for a minute).
//!
//! **Wake-up preemption.** A vCPU that wakes while every pCPU is busy would wait for the next
//! block or slice end (up to a whole slice); a guest that keeps both pCPUs busy (an event storm,
//! a console flood) would so add milliseconds to every other VM's event round trip.
//! [`Scheduler::preemption_victim`] names the running vCPU that should give way: of the busy ones
//! (preempted when they last left a pCPU, at a slice end or giving way: they do not block), the
//! one furthest ahead, if it is more than [`Fairness::granularity`] ahead of the woken vCPU;
//! and when: once it has run [`Fairness::min_run`] since it was loaded. A stream's vCPUs block
//! every few hundred microseconds, so they are not busy and never preempt one another (each
//! switch between VMs costs a refill of the pCPU's soft TLB under QEMU, and an early try that
//! preempted any vCPU that had run half a millisecond cost two and four pairs 10-12 %).
//!
//! **Polling ahead of busy vCPUs.** A light vCPU in a round trip (an event ping-pong beside VMs
//! that never block) would hand its pCPU to a busy vCPU at every WFI and take it back by
//! preemption at every reply, and under QEMU each switch between VMs costs a refill of the
//! pCPU's soft TLB. [`Scheduler::behind_every_runnable`] lets it keep the pCPU for a halt poll
//! instead when every runnable vCPU was preempted last (busy, not waiting for anyone) and is
//! more than the granularity ahead of it. A stream's vCPUs block every few hundred
//! microseconds and are woken by one another, so neither rule fires between them.

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

/// A running vCPU that is to give way to a woken one: [`Scheduler::preemption_victim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GiveWay {
    pub pcpu: usize,
    pub vcpu: VcpuId,
    /// When (counter ticks): not before it has run [`Fairness::min_run`] since it was loaded.
    pub at: u64,
}

/// The fairness bounds, in counter ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fairness {
    /// How far behind the vCPUs that compete now a waking vCPU may be placed.
    pub sleeper_credit: u64,
    /// How far ahead of a woken vCPU a running one must be to give way to it.
    pub granularity: u64,
    /// How long a running vCPU keeps its pCPU, since it was loaded, before it gives way (a
    /// bound on how often wake-ups can take a pCPU from it).
    pub min_run: u64,
}

impl Fairness {
    /// Sleeper credit, granularity, minimum run before giving way, in microseconds.
    pub const SLEEPER_CREDIT_US: u64 = 2_000;
    pub const GRANULARITY_US: u64 = 1_000;
    pub const MIN_RUN_US: u64 = 500;

    /// The bounds above for a counter of `frequency` Hz.
    pub fn at(frequency: u64) -> Self {
        let ticks = |us: u64| frequency.saturating_mul(us) / 1_000_000;
        Self {
            sleeper_credit: ticks(Self::SLEEPER_CREDIT_US),
            granularity: ticks(Self::GRANULARITY_US),
            min_run: ticks(Self::MIN_RUN_US),
        }
    }
}

#[derive(Default)]
pub struct Scheduler {
    states: Vec<RunState>,
    /// Counter ticks each vCPU has run (see the module doc), charged when it leaves its pCPU.
    vruntime: Vec<u64>,
    /// When each running vCPU was loaded (counter ticks).
    running_since: Vec<u64>,
    /// Whether each vCPU last left its pCPU because it was preempted (a slice end, giving way)
    /// rather than by blocking: it is busy, not waiting for anyone.
    preempted: Vec<bool>,
    /// Runnable vCPUs in the order they became runnable; may hold stale entries (a vCPU
    /// stopped while queued), which every walk skips.
    queue: VecDeque<VcpuId>,
    fairness: Fairness,
}

impl Scheduler {
    pub fn new(fairness: Fairness) -> Self {
        Self {
            fairness,
            ..Self::default()
        }
    }

    /// Registers a vCPU, initially off.
    pub fn add(&mut self) -> VcpuId {
        self.states.push(RunState::Off);
        self.vruntime.push(0);
        self.running_since.push(0);
        self.preempted.push(false);
        self.states.len() - 1
    }

    pub fn state(&self, id: VcpuId) -> RunState {
        self.states[id]
    }

    /// The counter ticks vCPU `id` has been charged with (its run time up to its last load).
    pub fn vruntime(&self, id: VcpuId) -> u64 {
        self.vruntime[id]
    }

    /// Blocked or off → runnable. Returns false if it was already runnable or running.
    pub fn wake(&mut self, id: VcpuId) -> bool {
        match self.states[id] {
            RunState::Blocked { .. } | RunState::Off => {
                self.make_runnable(id);
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
    pub fn block_io(&mut self, id: VcpuId, now: u64) {
        self.charge(id, now);
        self.states[id] = RunState::WaitingIo;
    }

    /// The answer to `id`'s I/O request is in: waiting → runnable. False in any other state.
    pub fn wake_io(&mut self, id: VcpuId) -> bool {
        if self.states[id] != RunState::WaitingIo {
            return false;
        }
        self.make_runnable(id);
        true
    }

    /// Takes the runnable vCPU that has run least for `pcpu`, loaded at `now`.
    pub fn pick(&mut self, pcpu: usize, now: u64) -> Option<VcpuId> {
        let states = &self.states;
        self.queue.retain(|&id| states[id] == RunState::Runnable);
        // `min_by_key` keeps the first of equals: the one queued first.
        let (at, &id) = self
            .queue
            .iter()
            .enumerate()
            .min_by_key(|&(_, &id)| self.vruntime[id])?;
        self.queue.remove(at);
        self.states[id] = RunState::Running { pcpu };
        self.running_since[id] = now;
        Some(id)
    }

    /// A running vCPU gives up its pCPU but stays runnable (time slice over, or yield).
    pub fn preempt(&mut self, id: VcpuId, now: u64) {
        debug_assert!(matches!(self.states[id], RunState::Running { .. }));
        self.charge(id, now);
        self.preempted[id] = true;
        self.states[id] = RunState::Runnable;
        self.queue.push_back(id);
    }

    pub fn block(&mut self, id: VcpuId, deadline: Option<u64>, now: u64) {
        self.charge(id, now);
        self.states[id] = RunState::Blocked { deadline };
    }

    pub fn stop(&mut self, id: VcpuId, now: u64) {
        self.charge(id, now);
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
                self.make_runnable(id);
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

    /// Who should give way to the runnable vCPU `woken`, woken at `now` (see the module doc):
    /// of the busy running vCPUs (preempted when they last left a pCPU), the one furthest ahead
    /// in run time, counting its run since it was loaded, if that is more than the
    /// granularity ahead of `woken`; and when: once it has run the minimum since it was
    /// loaded. None when no busy vCPU is far enough ahead (then `woken` waits for a block or a
    /// slice end, as any runnable vCPU does).
    pub fn preemption_victim(&self, woken: VcpuId, now: u64) -> Option<GiveWay> {
        if self.states.get(woken) != Some(&RunState::Runnable) {
            return None;
        }
        let bar = self.vruntime[woken].saturating_add(self.fairness.granularity);
        self.states
            .iter()
            .enumerate()
            .filter_map(|(id, state)| match *state {
                RunState::Running { pcpu } if self.preempted[id] => {
                    let since = self.running_since[id];
                    let ahead = self.vruntime[id].saturating_add(now.saturating_sub(since));
                    let at = now.max(since.saturating_add(self.fairness.min_run));
                    let give_way = GiveWay { pcpu, vcpu: id, at };
                    (ahead > bar).then_some((ahead, give_way))
                }
                _ => None,
            })
            .max_by_key(|&(ahead, _)| ahead)
            .map(|(_, give_way)| give_way)
    }

    /// Whether running vCPU `id`, counting its run since it was loaded (at `now`), is more than
    /// the granularity behind every runnable vCPU in run time (false if none is runnable): it
    /// would preempt any of them if it woke now, so it may keep its pCPU for a halt poll
    /// instead of handing it over and taking it back.
    pub fn behind_every_runnable(&self, id: VcpuId, now: u64) -> bool {
        let ran = match self.states.get(id) {
            Some(RunState::Running { .. }) => now.saturating_sub(self.running_since[id]),
            _ => return false,
        };
        let bar = self.vruntime[id]
            .saturating_add(ran)
            .saturating_add(self.fairness.granularity);
        let mut runnable = self
            .queue
            .iter()
            .filter(|&&other| self.states[other] == RunState::Runnable)
            .peekable();
        runnable.peek().is_some()
            && runnable.all(|&other| self.preempted[other] && self.vruntime[other] > bar)
    }

    /// Queues `id` as runnable, placed at most the sleeper credit behind the least run time
    /// among the vCPUs that run or wait to run now.
    fn make_runnable(&mut self, id: VcpuId) {
        let competing = self
            .states
            .iter()
            .enumerate()
            .filter(|&(other, state)| {
                other != id && matches!(state, RunState::Runnable | RunState::Running { .. })
            })
            .map(|(other, _)| self.vruntime[other])
            .min();
        if let Some(least) = competing {
            let floor = least.saturating_sub(self.fairness.sleeper_credit);
            self.vruntime[id] = self.vruntime[id].max(floor);
        }
        self.states[id] = RunState::Runnable;
        self.queue.push_back(id);
    }

    /// Charges a vCPU that leaves its pCPU at `now` with its run since it was loaded (and
    /// marks it not preempted: [`Self::preempt`] sets that again).
    fn charge(&mut self, id: VcpuId, now: u64) {
        self.preempted[id] = false;
        if let RunState::Running { .. } = self.states[id] {
            let ran = now.saturating_sub(self.running_since[id]);
            self.vruntime[id] = self.vruntime[id].saturating_add(ran);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wakes `id` (nothing else runnable), runs it on `pcpu` from 0 to `ran` and preempts it,
    /// then loads it again at `ran`: a busy vCPU that has run `ran` ticks.
    fn run_busy(s: &mut Scheduler, id: VcpuId, pcpu: usize, ran: u64) {
        s.wake(id);
        assert_eq!(s.pick(pcpu, 0), Some(id));
        s.preempt(id, ran);
        assert_eq!(s.pick(pcpu, ran), Some(id));
    }

    /// Bounds in round numbers of ticks.
    const FAIR: Fairness = Fairness {
        sleeper_credit: 2_000,
        granularity: 1_000,
        min_run: 1_000,
    };

    #[test]
    fn round_robin_with_preemption_lets_everyone_run() {
        let mut s = Scheduler::new(FAIR);
        let ids: Vec<_> = (0..3).map(|_| s.add()).collect();
        for &id in &ids {
            s.wake(id);
        }
        // One pCPU; vCPU 0 spins forever and is preempted at every tick.
        let mut ran = [0; 3];
        for _ in 0..30 {
            let id = s.pick(0, 0).unwrap();
            ran[id] += 1;
            s.preempt(id, 0);
        }
        assert_eq!(ran, [10, 10, 10]);
    }

    #[test]
    fn two_pcpus_never_run_the_same_vcpu() {
        let mut s = Scheduler::new(FAIR);
        let a = s.add();
        s.wake(a);
        assert_eq!(s.pick(0, 0), Some(a));
        assert_eq!(s.pick(1, 0), None);
        assert_eq!(s.state(a), RunState::Running { pcpu: 0 });
    }

    #[test]
    fn blocked_vcpu_wakes_at_its_deadline() {
        let mut s = Scheduler::new(FAIR);
        let a = s.add();
        s.wake(a);
        s.pick(0, 0);
        s.block(a, Some(1000), 0);
        assert_eq!(s.earliest_deadline(), Some(1000));
        assert_eq!(s.wake_expired(999), 0);
        assert_eq!(s.pick(0, 0), None);
        assert_eq!(s.wake_expired(1000), 1);
        assert_eq!(s.pick(0, 0), Some(a));
        assert_eq!(s.earliest_deadline(), None);
    }

    #[test]
    fn stopped_vcpu_left_in_queue_is_skipped() {
        let mut s = Scheduler::new(FAIR);
        let a = s.add();
        let b = s.add();
        s.wake(a);
        s.wake(b);
        s.stop(a, 0);
        assert_eq!(s.pick(0, 0), Some(b));
        assert_eq!(s.pick(1, 0), None);
        assert!(!s.has_runnable());
    }

    #[test]
    fn only_its_answer_wakes_a_vcpu_waiting_for_io() {
        let mut s = Scheduler::new(FAIR);
        let a = s.add();
        let b = s.add();
        s.wake(a);
        s.wake(b);
        assert_eq!(s.pick(0, 0), Some(a));
        s.block_io(a, 0);
        // An interrupt's wake-up, a passing deadline: still waiting, and not in the queue.
        assert!(!s.wake(a));
        assert_eq!(s.wake_expired(u64::MAX), 0);
        assert_eq!(s.earliest_deadline(), None);
        assert_eq!(s.state(a), RunState::WaitingIo);
        assert_eq!(s.pick(1, 0), Some(b));
        assert_eq!(s.pick(1, 0), None);
        // Its answer: runnable once, then picked.
        assert!(s.wake_io(a));
        assert!(!s.wake_io(a));
        assert_eq!(s.pick(0, 0), Some(a));
        // A stop ends the wait for good.
        s.block_io(a, 0);
        s.stop(a, 0);
        assert!(!s.wake_io(a));
        assert_eq!(s.state(a), RunState::Off);
    }

    #[test]
    fn a_delayed_vcpu_starts_at_its_time_and_not_before() {
        let mut s = Scheduler::new(FAIR);
        let a = s.add();
        s.start_at(a, 500);
        assert!(!s.wake(a), "an interrupt does not start it early");
        assert_eq!(s.earliest_deadline(), Some(500));
        assert_eq!(s.wake_expired(499), 0);
        assert_eq!(s.pick(0, 0), None);
        assert_eq!(s.wake_expired(500), 1);
        assert_eq!(s.pick(0, 0), Some(a));
    }

    #[test]
    fn wake_is_idempotent() {
        let mut s = Scheduler::new(FAIR);
        let a = s.add();
        assert!(s.wake(a));
        assert!(!s.wake(a));
        assert_eq!(s.pick(0, 0), Some(a));
        assert_eq!(s.pick(0, 0), None);
    }

    #[test]
    fn the_vcpu_that_ran_least_is_picked_first_and_equals_in_queue_order() {
        let mut s = Scheduler::new(FAIR);
        let (a, b, c) = (s.add(), s.add(), s.add());
        for id in [a, b, c] {
            s.wake(id);
        }
        assert_eq!(s.pick(0, 0), Some(a));
        s.preempt(a, 5_000);
        assert_eq!(s.vruntime(a), 5_000);
        // b and c have run nothing: queue order between them, both before a.
        assert_eq!(s.pick(0, 5_000), Some(b));
        s.preempt(b, 5_100);
        assert_eq!(s.pick(0, 5_100), Some(c));
        s.preempt(c, 5_200);
        assert_eq!(s.pick(0, 5_200), Some(b));
        assert_eq!(s.pick(1, 5_200), Some(c));
        assert_eq!(s.pick(1, 5_200), Some(a));
    }

    #[test]
    fn a_waking_vcpu_is_placed_at_most_the_sleeper_credit_behind() {
        let mut s = Scheduler::new(FAIR);
        let (busy, sleeper) = (s.add(), s.add());
        run_busy(&mut s, busy, 0, 1_000_000);
        // It slept (was off) for the whole time: it does not get a million ticks of credit.
        s.wake(sleeper);
        assert_eq!(s.vruntime(sleeper), 1_000_000 - FAIR.sleeper_credit);
        // It runs 500 ticks and sleeps to a deadline: woken by it, it keeps what it had run
        // (placement never moves a vCPU back).
        assert_eq!(s.pick(1, 1_000_000), Some(sleeper));
        s.block(sleeper, Some(1_000_600), 1_000_500);
        assert_eq!(s.vruntime(sleeper), 1_000_000 - FAIR.sleeper_credit + 500);
        assert_eq!(s.wake_expired(1_000_600), 1);
        assert_eq!(s.vruntime(sleeper), 1_000_000 - FAIR.sleeper_credit + 500);
        // With nobody else runnable or running, a wake changes nothing.
        let mut lone = Scheduler::new(FAIR);
        let only = lone.add();
        lone.wake(only);
        assert_eq!(lone.vruntime(only), 0);
    }

    #[test]
    fn a_woken_vcpu_preempts_a_busy_one_far_enough_ahead_once_it_ran_the_minimum() {
        let mut s = Scheduler::new(FAIR);
        let (hog, other, light) = (s.add(), s.add(), s.add());
        // The hog ends its runs preempted (busy); `other` runs long but blocks (not busy).
        run_busy(&mut s, hog, 1, 10_000);
        s.wake(other);
        assert_eq!(s.pick(0, 10_000), Some(other));
        s.block(other, None, 30_000);
        s.wake(light);
        assert_eq!(s.pick(0, 30_000), Some(light));
        s.block(light, None, 30_010);
        s.wake(other);
        assert_eq!(s.pick(0, 30_010), Some(other));
        s.preempt(hog, 30_010);
        assert_eq!(s.pick(1, 30_010), Some(hog));
        s.wake(light);
        // Placed the sleeper credit behind the least of the two.
        assert_eq!(s.vruntime(light), s.vruntime(other) - FAIR.sleeper_credit);
        // The hog gives way, not before it has run the minimum since it was loaded.
        assert_eq!(
            s.preemption_victim(light, 30_510),
            Some(GiveWay {
                pcpu: 1,
                vcpu: hog,
                at: 30_010 + FAIR.min_run
            })
        );
        assert_eq!(
            s.preemption_victim(light, 32_000),
            Some(GiveWay {
                pcpu: 1,
                vcpu: hog,
                at: 32_000
            })
        );
        // With the hog gone nobody gives way: `other`, far enough ahead too, blocked when it
        // last left a pCPU (it is not busy), however long it runs now.
        s.block(hog, None, 32_000);
        assert_eq!(s.preemption_victim(light, 32_000), None);
        assert_eq!(s.preemption_victim(light, 1_000_000), None);
        // Not for a vCPU that is not runnable.
        assert_eq!(s.preemption_victim(hog, 40_000), None);
    }

    #[test]
    fn a_busy_vcpu_gives_way_only_when_more_than_the_granularity_ahead() {
        let mut s = Scheduler::new(FAIR);
        let (busy, woken) = (s.add(), s.add());
        run_busy(&mut s, busy, 0, 0);
        s.wake(woken);
        assert_eq!(s.vruntime(woken), 0);
        assert_eq!(s.preemption_victim(woken, FAIR.granularity), None);
        assert_eq!(
            s.preemption_victim(woken, FAIR.granularity + 1),
            Some(GiveWay {
                pcpu: 0,
                vcpu: busy,
                at: FAIR.granularity + 1
            })
        );
    }

    #[test]
    fn a_light_vcpu_polls_ahead_only_of_busy_vcpus_far_ahead() {
        let mut s = Scheduler::new(FAIR);
        let (light, hog, waker) = (s.add(), s.add(), s.add());
        s.wake(light);
        assert_eq!(s.pick(0, 0), Some(light));
        // Nobody runnable: this is an idle poll, not one ahead of a queue.
        assert!(!s.behind_every_runnable(light, 100));
        s.wake(hog);
        assert_eq!(s.pick(1, 0), Some(hog));
        s.preempt(hog, 10_000);
        // The hog was preempted (busy) and is 10 000 ticks ahead.
        assert!(s.behind_every_runnable(light, 100));
        // Not once the light one has run within the granularity of it.
        assert!(!s.behind_every_runnable(light, 9_000));
        // Not ahead of a vCPU that blocked and woke (it waits for someone: a peer in a
        // stream), however far ahead.
        s.wake(waker);
        assert_eq!(s.pick(1, 10_000), Some(waker));
        s.block(waker, None, 30_000);
        s.wake(waker);
        assert!(s.vruntime(waker) > 10_000);
        assert!(!s.behind_every_runnable(light, 100));
        // Only a running vCPU polls.
        assert!(!s.behind_every_runnable(hog, 100));
    }

    /// One pCPU, a vCPU that never blocks and one that runs 100 ticks and sleeps 900, with
    /// the hypervisor's policy around them (wake-up preemption, slices of 10 000 ticks): once
    /// the spinner has ended a slice preempted, the sleeper never waits longer than the
    /// minimum run, and the spinner keeps most of the pCPU.
    #[test]
    fn a_sleeper_beside_a_spinner_waits_at_most_the_minimum_run() {
        const SLICE: u64 = 10_000;
        const STEP: u64 = 10;
        const END: u64 = 2_000_000;
        let mut s = Scheduler::new(FAIR);
        let (spinner, sleeper) = (s.add(), s.add());
        s.wake(spinner);
        let mut current = s.pick(0, 0).unwrap();
        let mut loaded_at = 0;
        s.start_at(sleeper, 3_333);
        let mut give_way: Option<GiveWay> = None;
        let (mut woke_at, mut longest_wait, mut spinner_ran, mut runs) = (None, 0, 0, 0);
        let mut now = 0;
        while now < END {
            now += STEP;
            if current == spinner {
                spinner_ran += STEP;
            }
            let mut switch = false;
            if current == sleeper && now - loaded_at >= 100 {
                s.block(sleeper, Some(now + 900), now);
                switch = true;
            } else if current == spinner && now - loaded_at >= SLICE {
                s.preempt(spinner, now);
                switch = true;
            }
            if s.wake_expired(now) > 0 {
                woke_at = Some(now);
                give_way = s.preemption_victim(sleeper, now);
            }
            if let Some(asked) = give_way.filter(|g| !switch && now >= g.at) {
                assert_eq!((asked.pcpu, asked.vcpu), (0, current));
                s.preempt(current, now);
                switch = true;
            }
            if switch {
                give_way = None;
                current = s.pick(0, now).unwrap();
                loaded_at = now;
                if current == sleeper {
                    runs += 1;
                    let waited = now - woke_at.take().unwrap();
                    // Until the spinner's first slice ends it is not busy: the sleeper's
                    // first wake-up waits for that slice end.
                    if runs > 1 {
                        longest_wait = longest_wait.max(waited);
                    } else {
                        assert_eq!(now, SLICE);
                    }
                }
            }
        }
        assert!(runs > 1_000, "the sleeper ran {runs} times");
        assert!(
            longest_wait <= FAIR.min_run,
            "it waited up to {longest_wait}"
        );
        assert!(spinner_ran > END * 8 / 10, "the spinner ran {spinner_ran}");
    }
}
