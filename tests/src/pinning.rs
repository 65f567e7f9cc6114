//! Pins QEMU's vCPU threads to host CPUs of their own, for every boot of the harness (the
//! stock Linux guest's too).
//!
//! Why: under TCG each vCPU is a host thread, and the hypervisor spins on its locks and in its
//! halt poll. When one vCPU kicks another (an SGI), the host wakes the kicked thread on the
//! kicker's CPU (the scheduler's wake-affine placement), so both vCPUs then share one host CPU
//! while the other sits idle. If the kicked vCPU spins on a lock the kicker still holds, the
//! holder waits for the spinner's whole host time slice (about 4 ms): a hypervisor trace of the
//! ping bench showed the scheduler lock waited on for 5.7 ms, and a quarter of the pings took
//! 3-50 ms. With one host CPU per vCPU thread that cannot happen (issue 11's ping tail).
//!
//! Pinning needs at least as many allowed host CPUs as vCPUs; with fewer it is left off (two
//! vCPU threads pinned to one CPU would be the problem made permanent). `SLUICE_PIN_VCPUS=0`
//! turns it off, to compare. QEMU's main loop (the NIC's host side) is not pinned: it runs on
//! whichever CPU is free.

use std::time::{Duration, Instant};

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet, Pid};

/// The environment variable that turns pinning off (`0`, `no`, `off` or `false`).
pub const PIN_ENV: &str = "SLUICE_PIN_VCPUS";

/// QEMU arguments that name its threads (`CPU <n>/TCG` for vCPU n), so that they can be found.
pub fn qemu_thread_name_args() -> [String; 2] {
    ["-name".into(), "sluice,debug-threads=on".into()]
}

/// Whether pinning is wanted, from the value of [`PIN_ENV`] (unset: yes).
pub fn wanted(env_value: Option<&str>) -> bool {
    !matches!(
        env_value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("0" | "no" | "off" | "false")
    )
}

/// The vCPU index of a QEMU thread named `comm` (`CPU 3/TCG` -> 3), `None` for other threads.
pub fn vcpu_of_thread(comm: &str) -> Option<usize> {
    let rest = comm.trim_end().strip_prefix("CPU ")?;
    let (index, accel) = rest.split_once('/')?;
    if accel.is_empty() {
        return None;
    }
    index.parse().ok()
}

/// The host CPU for each of `vcpus` vCPUs: the first `vcpus` CPUs of `allowed` (ascending), one
/// each. An error when there are fewer allowed CPUs than vCPUs.
pub fn plan(vcpus: usize, allowed: &[usize]) -> Result<Vec<usize>, String> {
    let mut cpus = allowed.to_vec();
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.len() < vcpus {
        return Err(format!(
            "{vcpus} vCPUs but only {} host CPU(s) allowed: vCPU threads not pinned",
            cpus.len()
        ));
    }
    cpus.truncate(vcpus);
    Ok(cpus)
}

/// The CPUs in `set`, ascending.
fn cpus_in(set: &CpuSet) -> Vec<usize> {
    (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect()
}

/// The host CPUs this process may run on.
pub fn allowed_cpus() -> Result<Vec<usize>, String> {
    let set = sched_getaffinity(None).map_err(|e| format!("sched_getaffinity: {e}"))?;
    Ok(cpus_in(&set))
}

/// The host CPU for each of `vcpus` vCPUs on this host, or why they stay unpinned (turned off
/// by [`PIN_ENV`], or too few host CPUs).
fn host_plan(vcpus: usize) -> Result<Vec<usize>, String> {
    if !wanted(std::env::var(PIN_ENV).ok().as_deref()) {
        return Err(format!("{PIN_ENV}=0"));
    }
    allowed_cpus().and_then(|allowed| plan(vcpus, &allowed))
}

/// What pinning would do for `vcpus` vCPUs on this host, in words (the bench's JSON and table).
pub fn policy(vcpus: usize) -> String {
    match host_plan(vcpus) {
        Ok(cpus) => format!(
            "vCPU threads pinned to host CPUs {}",
            cpus.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        Err(why) => format!("off ({why})"),
    }
}

/// The `-smp` count of a QEMU command line (1 when absent, as QEMU assumes).
pub fn vcpus_of_args(args: &[String]) -> usize {
    args.iter()
        .position(|a| a == "-smp")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(1)
}

/// The vCPU threads of process `pid` found so far: (vCPU index, thread id).
fn vcpu_threads(pid: u32) -> Vec<(usize, i32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let tid: i32 = task.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            Some((vcpu_of_thread(&comm)?, tid))
        })
        .collect()
}

/// The QEMU processes this process started and that still run (for checks from inside a boot).
pub fn qemu_children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !is_gone(&stat) && stat.contains("(qemu-system-") && parent_of(&stat) == Some(me)
        })
        .collect()
}

/// The parent process id in a `/proc/<pid>/stat` line.
fn parent_of(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The host CPUs each vCPU thread of QEMU process `pid` may run on, by vCPU index.
pub fn vcpu_affinities(pid: u32) -> Result<Vec<(usize, Vec<usize>)>, String> {
    let mut out = Vec::new();
    for (vcpu, tid) in vcpu_threads(pid) {
        let pid = Pid::from_raw(tid).ok_or_else(|| format!("bad thread id {tid}"))?;
        let set = sched_getaffinity(Some(pid))
            .map_err(|e| format!("sched_getaffinity of vCPU {vcpu}'s thread {tid}: {e}"))?;
        out.push((vcpu, cpus_in(&set)));
    }
    out.sort();
    Ok(out)
}

/// Whether a process whose `/proc/<pid>/stat` reads `stat` has ended (it is missing, a zombie
/// not yet reaped, or dead): its threads will never appear.
fn is_gone(stat: &str) -> bool {
    // The state letter follows the command name, which is in parentheses and may hold any.
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    !matches!(state, Some(s) if s != "Z" && s != "X")
}

/// Pins the `vcpus` vCPU threads of QEMU process `pid` (started with
/// [`qemu_thread_name_args`]), waiting up to `wait` for QEMU to create them. `Ok(None)` when
/// pinning is off (by [`PIN_ENV`] or too few host CPUs); `Ok(Some(cpus))`: vCPU n is on
/// `cpus[n]`.
pub fn pin_qemu(pid: u32, vcpus: usize, wait: Duration) -> Result<Option<Vec<usize>>, String> {
    let Ok(cpus) = host_plan(vcpus) else {
        return Ok(None);
    };
    let start = Instant::now();
    let threads = loop {
        let found = vcpu_threads(pid);
        if found.len() >= vcpus {
            break found;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if start.elapsed() >= wait || is_gone(&stat) {
            return Err(format!(
                "found {} of QEMU's {vcpus} vCPU threads within {} ms",
                found.len(),
                wait.as_millis()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    for (vcpu, tid) in threads {
        let Some(&cpu) = cpus.get(vcpu) else {
            return Err(format!("QEMU has a vCPU thread {vcpu} beyond -smp {vcpus}"));
        };
        let mut set = CpuSet::new();
        set.set(cpu);
        let pid = Pid::from_raw(tid).ok_or_else(|| format!("bad thread id {tid}"))?;
        sched_setaffinity(Some(pid), &set)
            .map_err(|e| format!("cannot pin vCPU {vcpu} (thread {tid}) to CPU {cpu}: {e}"))?;
    }
    Ok(Some(cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_names_give_the_vcpu_index() {
        assert_eq!(vcpu_of_thread("CPU 0/TCG\n"), Some(0));
        assert_eq!(vcpu_of_thread("CPU 13/TCG"), Some(13));
        assert_eq!(vcpu_of_thread("CPU 1/KVM"), Some(1));
        for other in [
            "qemu-system-aar",
            "call_rcu",
            "CPU x/TCG",
            "CPU 1",
            "CPU 1/",
            "worker",
        ] {
            assert_eq!(vcpu_of_thread(other), None, "{other}");
        }
    }

    #[test]
    fn each_vcpu_gets_a_cpu_of_its_own() {
        assert_eq!(plan(2, &[0, 1]), Ok(vec![0, 1]));
        // The lowest allowed ones, whatever order the set came in; duplicates count once.
        assert_eq!(plan(2, &[7, 3, 5, 3]), Ok(vec![3, 5]));
        assert_eq!(plan(1, &[4, 2]), Ok(vec![2]));
        let refused = plan(2, &[1, 1]).unwrap_err();
        assert!(refused.contains("only 1 host CPU"), "{refused}");
        assert!(plan(4, &[0, 1]).is_err());
    }

    #[test]
    fn only_an_explicit_no_turns_pinning_off() {
        assert!(wanted(None));
        assert!(wanted(Some("1")));
        assert!(wanted(Some("yes")));
        for off in ["0", "no", "OFF", " false "] {
            assert!(!wanted(Some(off)), "{off}");
        }
    }

    #[test]
    fn the_vcpu_count_comes_from_smp() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            vcpus_of_args(&args(&["-M", "virt", "-smp", "2", "-m", "1G"])),
            2
        );
        assert_eq!(vcpus_of_args(&args(&["-smp", "4,sockets=1"])), 4);
        assert_eq!(vcpus_of_args(&args(&["-M", "virt"])), 1);
        assert_eq!(vcpus_of_args(&args(&["-smp"])), 1);
    }

    #[test]
    fn this_process_has_allowed_cpus() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        assert!(plan(cpus.len(), &cpus).is_ok());
    }

    #[test]
    fn a_missing_process_is_an_error() {
        // No process has this id: pinning reports it instead of waiting for its threads.
        let result = pin_qemu(u32::MAX, 1, Duration::from_secs(60));
        if wanted(std::env::var(PIN_ENV).ok().as_deref()) {
            let why = result.unwrap_err();
            assert!(why.contains("found 0 of QEMU's 1 vCPU threads"), "{why}");
        } else {
            assert_eq!(result, Ok(None));
        }
    }

    #[test]
    fn state_letters_say_when_a_process_is_gone() {
        assert!(!is_gone("1234 (qemu-system-aar) S 1 1234 ..."));
        assert!(!is_gone("1234 (a (b) c) R 1"));
        assert!(is_gone("1234 (qemu-system-aar) Z 1 1234 ..."));
        assert!(is_gone("1234 (x) X 1"));
        assert!(is_gone(""));
    }

    #[test]
    fn the_parent_comes_after_the_state() {
        assert_eq!(parent_of("1234 (qemu-system-aar) S 77 1234 0"), Some(77));
        assert_eq!(parent_of("9 (odd) name) R 1 9"), Some(1));
        assert_eq!(parent_of("9 (x) S"), None);
        assert_eq!(parent_of(""), None);
    }
}
