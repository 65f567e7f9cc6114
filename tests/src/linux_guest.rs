//! The stock Linux guest: the baseline of issue 11's host-path goal ("host -> guest and
//! guest -> host at least 1.2x what a stock Linux guest gets through the same NIC back-end on the
//! same QEMU"), booted and measured by the bench's `linux` group beside our own figures.
//!
//! The image is Debian's: the arm64 kernel from bookworm-backports (6.12, the kernel of the
//! user's guest) and an initramfs of busybox and Debian's iperf3 whose `/init` loads virtio-net,
//! sets eth0 to [`GUEST_IP`]/24 via [`DEFAULT_GATEWAY`] (QEMU user networking's defaults) and
//! runs `iperf3 -s`, printing [`READY`] once it listens. `scripts/linux-guest.sh` fetches the
//! packages with apt's own signature checks and builds it into a cache outside the clone
//! ([`cache_dir`]; `./run.sh bench` and `./run.sh test` run the script); this module only reads
//! the result ([`Image::find`]).
//!
//! The machine is what a user would run: QEMU `virt` without `virtualization=on` (a plain
//! guest, no hypervisor under it), the `-cpu` of our boots ([`crate::qemu::CPU`]), 2 vCPUs,
//! 1 GiB, and a plain `virtio-net-pci` on user networking (slirp) with one host port forwarded
//! to the guest's iperf3 server. One boot serves every test ([`measure`]): the host's
//! `iperf3 -c` (the same client, seconds and default window as the `host_guest` scenario's,
//! [`crate::iperf::run_client`]), host -> guest then guest -> host (`-R`), `runs` times.
//!
//! What the baseline is not: a different TCP stack (Linux's, with window scaling toward slirp,
//! CUBIC, GRO) and a different guest kernel in a different VM (no EL2 under it, no driver
//! domain). It says what the same QEMU and the same slirp give a guest a user would otherwise
//! run, which is the comparison the goal makes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::hostnet::HostForward;
pub use crate::hostnet::{DEFAULT_GATEWAY, DRIVER_DOMAIN_IP as GUEST_IP};
use crate::iperf::{run_client, HostRun, IPERF_PORT};
use crate::net::{free_port, Proto};
use crate::qemu::{self, Boot, BootOptions, NIC_MAC, NIC_NETDEV_ID, USER_NET};

/// The line `/init` prints once iperf3's server listens (the script writes the same text).
pub const READY: &str = "sluice-linux-guest: iperf3 server ready";
/// The line `/init` prints every second once ready: the console is otherwise quiet while the
/// tests run, and the harness decides to stop QEMU when a line arrives.
pub const HEARTBEAT: &str = "sluice-linux-guest: alive";
/// The environment variable that moves the image cache (the script reads it too).
pub const CACHE_ENV: &str = "SLUICE_LINUX_GUEST_CACHE";
/// What builds the image, relative to the repository.
pub const FETCH_SCRIPT: &str = "scripts/linux-guest.sh";
/// vCPUs and memory of the guest: those of the user's guest, and of our bench machine.
pub const CPUS: u32 = 2;
pub const MEMORY_MIB: u64 = 1024;

/// Where `scripts/linux-guest.sh` keeps its images: `$SLUICE_LINUX_GUEST_CACHE`, else
/// `$XDG_CACHE_HOME/sluice/linux-guest`, else `~/.cache/sluice/linux-guest`.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(
        std::env::var_os(CACHE_ENV).map(PathBuf::from),
        std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn cache_dir_from(own: Option<PathBuf>, xdg: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    let nonempty = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| !p.as_os_str().is_empty());
    if nonempty(&own) {
        return own.unwrap_or_default();
    }
    let base = if nonempty(&xdg) {
        xdg.unwrap_or_default()
    } else {
        home.unwrap_or_else(|| PathBuf::from("/root"))
            .join(".cache")
    };
    base.join("sluice").join("linux-guest")
}

/// A built image: kernel, initramfs and the package versions it was built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// `package=version` lines, the kernel's first.
    pub packages: String,
}

impl Image {
    /// The current image of [`cache_dir`], or why there is none and what to run.
    pub fn find() -> Result<Image, String> {
        Image::find_in(&cache_dir().join("current"))
    }

    fn find_in(dir: &Path) -> Result<Image, String> {
        let missing = |what: &str| {
            format!(
                "the stock Linux guest is not built ({what} in {} is missing): run \
                 {FETCH_SCRIPT} (./run.sh bench and ./run.sh test do), which fetches Debian's \
                 arm64 kernel, busybox and iperf3 with apt",
                dir.display()
            )
        };
        let image = Image {
            kernel: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs.gz"),
            packages: std::fs::read_to_string(dir.join("packages.txt"))
                .map_err(|_| missing("packages.txt"))?,
        };
        for (path, name) in [
            (&image.kernel, "vmlinuz"),
            (&image.initramfs, "initramfs.gz"),
        ] {
            if !path.is_file() {
                return Err(missing(name));
            }
        }
        Ok(image)
    }

    /// The kernel package and its version (`linux-image-6.12.95+deb12-arm64`,
    /// `6.12.95-1~bpo12+1`), from the first `linux-image-*` line of the package list.
    pub fn kernel_package(&self) -> Option<(&str, &str)> {
        kernel_package(&self.packages)
    }
}

/// The `linux-image-*` entry of a `package=version` list (see [`Image::packages`]).
pub fn kernel_package(packages: &str) -> Option<(&str, &str)> {
    packages
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(p, v)| p.starts_with("linux-image-") && !v.is_empty())
}

/// The kernel command line: the console on the PL011 (whose lines the harness reads), and a
/// panic (say, `/init` dying) ends the run at once instead of hanging until the timeout.
pub fn kernel_command_line() -> String {
    "console=ttyAMA0 panic=-1".to_string()
}

/// The QEMU command line for `image`, with host port `host_port` (127.0.0.1) forwarded to the
/// guest's iperf3 server (see the module docs for why each part is what it is).
pub fn qemu_args(image: &Image, host_port: u16) -> Vec<String> {
    let forward = HostForward::tcp(host_port, GUEST_IP, IPERF_PORT);
    let mut args = qemu::machine_args("virt,gic-version=3", CPUS, MEMORY_MIB);
    args.extend([
        // A kernel panic reboots (panic=-1), which ends QEMU here.
        "-no-reboot".into(),
        "-kernel".into(),
        image.kernel.display().to_string(),
        "-initrd".into(),
        image.initramfs.display().to_string(),
        "-append".into(),
        kernel_command_line(),
        "-netdev".into(),
        format!("user,id={NIC_NETDEV_ID},net={USER_NET},hostfwd={forward}"),
        "-device".into(),
        // `romfile=`: the option ROM is x86 PXE code, absent without ipxe-qemu.
        format!("virtio-net-pci,netdev={NIC_NETDEV_ID},romfile=,mac={NIC_MAC}"),
    ]);
    args
}

/// How long the boot of [`measure`] may take in all: boot (the kernel under TCG on a loaded
/// machine) plus every test with room for the client's retries.
pub fn timeout(seconds: u32, runs: usize) -> Duration {
    let tests = 2 * runs as u64;
    Duration::from_secs(120 + tests * (u64::from(seconds) + 30))
}

/// What one boot of the stock Linux guest measured: each test's outcome, in order.
#[derive(Debug)]
pub struct Measured {
    /// Host -> guest (`iperf3 -c`), one per run.
    pub to_guest: Vec<Result<HostRun, String>>,
    /// Guest -> host (`iperf3 -c -R`), one per run.
    pub from_guest: Vec<Result<HostRun, String>>,
    /// The guest's kernel and versions (the image's package list).
    pub packages: String,
    pub boot: Boot,
    /// From QEMU's start to [`READY`], if it came.
    pub ready_after: Option<Duration>,
}

impl Measured {
    /// `why`, then how the boot ended and its last console lines, for an error message.
    pub fn failure(&self, why: &str) -> String {
        let b = &self.boot;
        let mut out = why.to_string();
        out += &b.end_note();
        if self.ready_after.is_none() {
            out += &format!("\n    the guest never printed '{READY}'");
        }
        // The heartbeat says nothing; the lines before it do.
        let lines: Vec<&str> = b
            .lines
            .iter()
            .map(String::as_str)
            .filter(|l| !l.contains(HEARTBEAT))
            .collect();
        let tail = lines.len().saturating_sub(15);
        out += &format!("\n    last console lines:\n{}", lines[tail..].join("\n"));
        out
    }
}

/// One host test: whether it was `-R` (guest -> host), and what it measured.
type Outcome = (bool, Result<HostRun, String>);

/// Boots the stock Linux guest once and runs the host's iperf3 against it: host -> guest, then
/// guest -> host, `runs` times, each test `seconds` long. QEMU is killed when the tests are done,
/// at [`timeout`], or if anything here panics. `Err` only when the image is missing or QEMU
/// cannot start; a boot that never got ready has no tests, one cut short fewer than `runs`.
pub fn measure(seconds: u32, runs: usize) -> Result<Measured, String> {
    let image = Image::find()?;
    let port = free_port(Proto::Tcp);
    let args = qemu_args(&image, port);
    let done = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let started = AtomicBool::new(false);
    let start = Instant::now();
    let ready_at: Mutex<Option<Duration>> = Mutex::new(None);
    let on_line = |line: &str| {
        if !line.contains(READY) || started.swap(true, Ordering::SeqCst) {
            return;
        }
        *ready_at.lock().expect("not poisoned") = Some(start.elapsed());
        let (done, outcomes) = (done.clone(), outcomes.clone());
        std::thread::spawn(move || {
            let limit = Duration::from_secs(u64::from(seconds) + 90);
            for _ in 0..runs {
                for reverse in [false, true] {
                    let outcome = run_client(port, seconds, reverse, limit);
                    outcomes
                        .lock()
                        .expect("not poisoned")
                        .push((reverse, outcome));
                }
            }
            done.store(true, Ordering::SeqCst);
        });
    };
    // The guest prints a heartbeat line every second (see [`HEARTBEAT`]), so the boot stops
    // within a second of the last test.
    let stop = |_: &str| done.load(Ordering::SeqCst);
    let boot = qemu::run(
        &qemu::qemu_program(None),
        &args,
        start,
        &BootOptions {
            timeout: timeout(seconds, runs),
            on_line: Some(&on_line),
            stop_when: Some(&stop),
            ..BootOptions::default()
        },
    )?;
    let ready_after = *ready_at.lock().expect("not poisoned");
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("not poisoned"));
    let mut to_guest = Vec::new();
    let mut from_guest = Vec::new();
    for (reverse, outcome) in outcomes {
        if reverse {
            from_guest.push(outcome);
        } else {
            to_guest.push(outcome);
        }
    }
    Ok(Measured {
        to_guest,
        from_guest,
        packages: image.packages,
        boot,
        ready_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        Image {
            kernel: PathBuf::from("/c/current/vmlinuz"),
            initramfs: PathBuf::from("/c/current/initramfs.gz"),
            packages: "linux-image-6.12.95+deb12-arm64=6.12.95-1~bpo12+1\n\
                       busybox-static=1:1.35.0-4+deb12u1+b1\niperf3=3.12-1+deb12u2"
                .into(),
        }
    }

    #[test]
    fn the_cache_follows_its_variable_then_xdg_then_home() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            cache_dir_from(p("/own"), p("/xdg"), p("/home/u")),
            PathBuf::from("/own")
        );
        assert_eq!(
            cache_dir_from(None, p("/xdg"), p("/home/u")),
            PathBuf::from("/xdg/sluice/linux-guest")
        );
        // Empty variables count as unset, as in the script's ${VAR:-...}.
        assert_eq!(
            cache_dir_from(p(""), p(""), p("/home/u")),
            PathBuf::from("/home/u/.cache/sluice/linux-guest")
        );
    }

    #[test]
    fn the_kernel_package_is_read_from_the_package_list() {
        assert_eq!(
            image().kernel_package(),
            Some(("linux-image-6.12.95+deb12-arm64", "6.12.95-1~bpo12+1"))
        );
        assert_eq!(kernel_package("iperf3=3.12\nlinux-image-x=\n"), None);
        assert_eq!(kernel_package(""), None);
    }

    #[test]
    fn a_missing_image_says_what_to_run() {
        let dir = std::env::temp_dir().join(format!("sluice-linux-guest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let e = Image::find_in(&dir).unwrap_err();
        assert!(
            e.contains(FETCH_SCRIPT) && e.contains("packages.txt"),
            "{e}"
        );
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("packages.txt"), "linux-image-x=1\n").unwrap();
        std::fs::write(dir.join("vmlinuz"), "k").unwrap();
        let e = Image::find_in(&dir).unwrap_err();
        assert!(e.contains("initramfs.gz"), "{e}");
        std::fs::write(dir.join("initramfs.gz"), "i").unwrap();
        let found = Image::find_in(&dir).unwrap();
        assert_eq!(found.kernel, dir.join("vmlinuz"));
        assert_eq!(found.kernel_package(), Some(("linux-image-x", "1")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_machine_is_a_plain_guest_with_a_forward_to_its_iperf3_server() {
        let a = qemu_args(&image(), 40123);
        let after = |flag: &str| {
            let i = a
                .iter()
                .position(|s| s == flag)
                .unwrap_or_else(|| panic!("{flag}"));
            a[i + 1].as_str()
        };
        // No virtualization=on: nothing runs at EL2 under a user's guest.
        assert_eq!(after("-M"), "virt,gic-version=3");
        assert_eq!(after("-cpu"), qemu::CPU);
        assert_eq!((after("-smp"), after("-m")), ("2", "1024M"));
        assert_eq!(after("-kernel"), "/c/current/vmlinuz");
        assert_eq!(after("-initrd"), "/c/current/initramfs.gz");
        assert_eq!(after("-append"), "console=ttyAMA0 panic=-1");
        assert_eq!(
            after("-netdev"),
            "user,id=nic0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:40123-10.0.2.15:5201"
        );
        assert_eq!(
            after("-device"),
            "virtio-net-pci,netdev=nic0,romfile=,mac=52:54:00:12:34:56"
        );
        assert!(a.iter().any(|s| s == "-no-reboot"));
        assert!(!a
            .iter()
            .any(|s| s.contains("iommu") || s.contains("virtualization")));
    }

    #[test]
    fn the_timeout_leaves_room_for_every_test() {
        let one = timeout(5, 1);
        let five = timeout(5, 5);
        assert!(one >= Duration::from_secs(120 + 2 * 5));
        assert_eq!(five - one, Duration::from_secs(8 * 35));
    }

    #[test]
    fn the_script_prints_the_lines_the_harness_waits_for() {
        // One source of truth would be better; the script is bash, so this test keeps the two
        // in step: the markers, the guest's address and gateway, iperf3's port.
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(FETCH_SCRIPT),
        )
        .unwrap();
        for needle in [
            format!("READY='{READY}'"),
            format!("HEARTBEAT='{HEARTBEAT}'"),
            format!("GUEST_IP={GUEST_IP}/24"),
            format!("GATEWAY={DEFAULT_GATEWAY}"),
            format!(":{IPERF_PORT} "),
            format!("{CACHE_ENV}:-"),
        ] {
            assert!(script.contains(&needle), "{FETCH_SCRIPT} lacks {needle}");
        }
    }
}
