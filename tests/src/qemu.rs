//! Booting a topology in QEMU: builds its bundle, starts `qemu-system-aarch64` with the
//! hypervisor, streams and records the console, and enforces a hard timeout. QEMU is killed
//! whenever a [`Boot`] ends — by timeout, by an early-stop condition, or by a panic in the caller.
//!
//! A topology with a passthrough VM gets a NIC: the machine gains an SMMUv3 (stage 2, which is
//! what the hypervisor programs), and a modern-only virtio-net-pci function that goes through
//! the IOMMU is placed on the root bus at the topology's address. Its host side is what the
//! topology's `[machine] nic` says: QEMU user networking on [`USER_NET`] (the default), with the
//! host ports of [`BootOptions::host_forwards`] forwarded from 127.0.0.1 to the guest network;
//! or, with `nic = "tap"`, the tap device of a [`TapNet`] (a network namespace of its own, see
//! [`crate::tap`]), with QEMU started inside that namespace (`ip netns exec NS qemu-system-aarch64
//! ...`); or, with `nic = "passt"`, a [`PasstNet`] started for the boot (QEMU connects to its
//! unix socket with `-netdev stream`; the host forwards become passt's `-t`/`-u` options).
//! A topology without a passthrough VM gets no NIC at all (`-nic none`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use crate::hostnet::{HostForward, Proto};
use crate::passt::PasstNet;
use crate::tap::{in_netns_args, TapNet, TAP_IFNAME};
use crate::topology::{pack, NicBackend, Topology};

/// The guest network of QEMU user networking: the host is 10.0.2.2, its DNS 10.0.2.3.
pub const USER_NET: &str = "10.0.2.0/24";
/// The NIC's MAC address (QEMU's usual first one).
pub const NIC_MAC: &str = "52:54:00:12:34:56";
/// QEMU id of the NIC's host side (`-netdev ...,id=`).
pub const NIC_NETDEV_ID: &str = "nic0";
/// The QEMU binary.
pub const QEMU: &str = "qemu-system-aarch64";
/// The CPU model of every boot (the stock Linux guest's too, so that both run the same TCG CPU).
pub const CPU: &str = "max";

/// The start of every QEMU command line of the harness: machine `machine`, [`CPU`], `cpus`
/// vCPUs, `memory_mib` of RAM, no display or monitor, the serial console on stdio (which the
/// harness reads), and named threads (for [`crate::pinning`]).
pub fn machine_args(machine: &str, cpus: u32, memory_mib: u64) -> Vec<String> {
    let [name, threads] = crate::pinning::qemu_thread_name_args();
    vec![
        "-M".into(),
        machine.into(),
        "-cpu".into(),
        CPU.into(),
        "-smp".into(),
        cpus.to_string(),
        "-m".into(),
        format!("{memory_mib}M"),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        "stdio".into(),
        name,
        threads,
    ]
}
/// The environment variable naming a pcap file for the NIC's frames ([`BootOptions::nic_pcap`]).
pub const NIC_PCAP_ENV: &str = "SLUICE_NIC_PCAP";

/// The capture file for one boot: `path` itself, or in a directory `path`, a file of its own
/// per boot (`nic-<pid>-<n>.pcap`, numbered in boot order).
fn pcap_file(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    if path.is_dir() {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        path.join(format!("nic-{}-{n}.pcap", std::process::id()))
    } else {
        path.to_path_buf()
    }
}

/// QEMU arguments that dump every frame of the NIC's netdev into `path` (pcap). Appended
/// after the `-netdev` they name.
pub fn nic_pcap_args(path: &Path) -> Vec<String> {
    vec![
        "-object".into(),
        format!(
            "filter-dump,id=nicdump,netdev={NIC_NETDEV_ID},file={}",
            path.display()
        ),
    ]
}

/// Built images: the hypervisor (a flat arm64 Image; the ELF beside it is for gdb) and one flat
/// binary per VM image name.
pub struct Artifacts {
    pub dir: PathBuf,
    pub hypervisor: PathBuf,
    pub images: HashMap<String, Vec<u8>>,
}

impl Artifacts {
    /// Reads the artifacts from `$SLUICE_ARTIFACTS`, or `target/sluice` of the workspace.
    pub fn load() -> Result<Artifacts, String> {
        let dir = std::env::var_os("SLUICE_ARTIFACTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sluice"));
        let hypervisor = dir.join("hypervisor.bin");
        if !hypervisor.exists() {
            return Err(format!(
                "{} is missing: build the images first with './run.sh build' (./run.sh test does it)",
                hypervisor.display()
            ));
        }
        let mut images = HashMap::new();
        for name in ["guest-frontend", "driver-domain"] {
            let path = dir.join(format!("{name}.bin"));
            let bytes =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            images.insert(name.to_string(), bytes);
        }
        Ok(Artifacts {
            dir,
            hypervisor,
            images,
        })
    }
}

pub struct BootOptions<'a> {
    /// Hard limit; QEMU is killed when it is reached.
    pub timeout: Duration,
    /// Print each console line as it arrives (the demo), or stay quiet (tests).
    pub echo: bool,
    /// Stop early (kill QEMU) once this returns true for a line.
    pub stop_when: Option<&'a dyn Fn(&str) -> bool>,
    /// Use these bytes as the boot bundle instead of packing the topology (corruption tests).
    pub bundle_override: Option<Vec<u8>>,
    /// Host ports forwarded to the guest network of the NIC. Only for a topology with a
    /// passthrough VM and user networking or passt (otherwise [`boot`] refuses them).
    pub host_forwards: Vec<HostForward>,
    /// For a topology with `nic = "tap"`: the network namespace and tap to run QEMU in, made by
    /// the caller so that its host tools can use it while the VMs run. Without one, [`boot`]
    /// makes its own for the boot. Refused for other topologies.
    pub tap: Option<&'a TapNet>,
    /// Called with every line as it arrives (console lines and `[qemu] ` stderr lines, in the
    /// order they are recorded), before `stop_when`: e.g. to start host-side traffic once the
    /// driver domain says its network is up. It runs on the thread that reads the console, so
    /// anything long-running belongs on a thread of its own.
    pub on_line: Option<&'a dyn Fn(&str)>,
    /// Record every frame through the NIC's host side into this pcap file (QEMU's
    /// `filter-dump`), for timing studies with tcpdump or tshark; a directory gets one file per
    /// boot. Default: the path in
    /// `$SLUICE_NIC_PCAP` when set, so any test or bench boot can be captured without code
    /// changes. Ignored for a topology without a NIC.
    pub nic_pcap: Option<PathBuf>,
}

impl Default for BootOptions<'_> {
    fn default() -> Self {
        BootOptions {
            timeout: Duration::from_secs(60),
            echo: false,
            stop_when: None,
            bundle_override: None,
            host_forwards: Vec::new(),
            tap: None,
            on_line: None,
            nic_pcap: std::env::var_os(NIC_PCAP_ENV).map(PathBuf::from),
        }
    }
}

/// What one boot printed and how it ended.
#[derive(Debug)]
pub struct Boot {
    pub lines: Vec<String>,
    pub timed_out: bool,
    pub stopped_early: bool,
    /// QEMU exited on its own (the hypervisor powered the machine off).
    pub exited: bool,
    pub elapsed: Duration,
}

impl Boot {
    /// How QEMU ended, for a failure message: an indented line of its own when it timed out
    /// (and was killed) or exited by itself, else nothing (the harness stopped it).
    pub fn end_note(&self) -> String {
        if self.timed_out {
            format!(
                "\n    QEMU timed out after {:.0} s (killed)",
                self.elapsed.as_secs_f64()
            )
        } else if self.exited {
            format!(
                "\n    QEMU exited after {:.1} s",
                self.elapsed.as_secs_f64()
            )
        } else {
            String::new()
        }
    }

    pub fn has(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }

    /// Index of the first line containing `needle`.
    pub fn position(&self, needle: &str) -> Option<usize> {
        self.lines.iter().position(|l| l.contains(needle))
    }

    /// Lines a given VM printed (without the "[name] " prefix).
    pub fn vm_lines<'a>(&'a self, vm: &str) -> impl Iterator<Item = &'a str> + 'a {
        let prefix = format!("[{vm}] ");
        self.lines
            .iter()
            .filter_map(move |l| l.strip_prefix(prefix.as_str()))
    }

    /// The whole console, for assertion messages.
    pub fn transcript(&self) -> String {
        self.lines.join("\n")
    }
}

/// Kills QEMU when dropped, whatever happened.
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The QEMU command line for a topology (the arguments; see [`qemu_program`] for what runs
/// them). Without a passthrough VM it is the plain machine and `host_forwards` is ignored
/// ([`boot`] refuses that combination); with one, the machine gets an SMMUv3 and the NIC (see
/// the module docs). With `nic = "tap"` the NIC's host side is the tap [`TAP_IFNAME`] of the
/// namespace QEMU runs in, and `host_forwards` is ignored too; with `nic = "passt"` it is the
/// passt socket `passt_socket` (passt does the forwarding).
pub fn qemu_args(
    topology: &Topology,
    hypervisor: &Path,
    bundle: &Path,
    host_forwards: &[HostForward],
    passt_socket: Option<&Path>,
) -> Vec<String> {
    let nic = topology.passthrough().map(|(_, bdf)| {
        (
            bdf,
            topology.machine.nic.clone().unwrap_or(NicBackend::User),
        )
    });
    let mut machine = format!(
        "virt,virtualization=on,gic-version={}",
        topology.machine.gic
    );
    if nic.is_some() {
        machine.push_str(",iommu=smmuv3");
    }
    let mut args = machine_args(&machine, topology.machine.cpus, topology.machine.memory_mib);
    args.extend([
        "-kernel".into(),
        hypervisor.display().to_string(),
        "-initrd".into(),
        bundle.display().to_string(),
    ]);
    // The hypervisor reads it from the device tree's /chosen/bootargs.
    if let Some(hz) = topology.machine.profile_hz {
        args.extend([
            "-append".into(),
            format!("{}={hz}", shared_abi::profile::KEY),
        ]);
    }
    let Some((bdf, backend)) = nic else {
        // Without this QEMU adds its default NIC (a virtio-net-pci that nobody owns and whose
        // option ROM, package ipxe-qemu, may not even be installed).
        args.extend(["-nic".into(), "none".into()]);
        return args;
    };
    let netdev = match backend {
        NicBackend::User => {
            let mut netdev = format!("user,id={NIC_NETDEV_ID},net={USER_NET}");
            for forward in host_forwards {
                netdev += &format!(",hostfwd={forward}");
            }
            netdev
        }
        // The tap exists already (TapNet made it, persistent), so no scripts; QEMU only
        // attaches to it.
        NicBackend::Tap => {
            format!("tap,id={NIC_NETDEV_ID},ifname={TAP_IFNAME},script=no,downscript=no")
        }
        NicBackend::Passt => format!(
            "stream,id={NIC_NETDEV_ID},server=off,addr.type=unix,addr.path={}",
            passt_socket.map_or_else(String::new, |p| p.display().to_string())
        ),
    };
    // The topology guarantees bus 0: QEMU virt's root bus is pcie.0. `romfile=` because
    // the option ROM (x86 PXE code, package ipxe-qemu) is useless here and absent on
    // machines that installed QEMU without recommends.
    let device = format!(
        "virtio-net-pci,netdev={NIC_NETDEV_ID},disable-legacy=on,iommu_platform=on,\
         romfile=,bus=pcie.0,addr={:#04x}.{},mac={NIC_MAC}",
        bdf.device(),
        bdf.function()
    );
    args.extend([
        // QEMU's SMMUv3 does stage 1 only unless told otherwise; passed-through streams
        // translate with stage 2 only, through the owning VM's own tables.
        "-global".into(),
        "arm-smmuv3.stage=2".into(),
        "-netdev".into(),
        netdev,
        "-device".into(),
        device,
    ]);
    args
}

/// The program and first arguments that run QEMU: `qemu-system-aarch64`, or inside network
/// namespace `netns`, `ip netns exec NS qemu-system-aarch64` (ip execs QEMU, so the process is
/// QEMU's and killing it kills QEMU).
pub fn qemu_program(netns: Option<&str>) -> Vec<String> {
    match netns {
        None => vec![QEMU.to_string()],
        Some(netns) => {
            let mut argv = vec!["ip".to_string()];
            argv.extend(in_netns_args(netns, QEMU));
            argv
        }
    }
}

pub fn boot(
    topology: &Topology,
    artifacts: &Artifacts,
    options: &BootOptions,
) -> Result<Boot, String> {
    let nic = topology
        .passthrough()
        .map(|_| topology.machine.nic.clone().unwrap_or(NicBackend::User));
    if !options.host_forwards.is_empty() {
        match nic {
            None => {
                return Err(
                    "host forwards need a NIC, but no VM of the topology has a passthrough"
                        .to_owned(),
                )
            }
            Some(NicBackend::Tap) => {
                return Err(
                    "host forwards are for nic = \"user\"; with nic = \"tap\" the host's \
                            tools reach the VMs' addresses from inside the network namespace"
                        .to_owned(),
                )
            }
            Some(NicBackend::User | NicBackend::Passt) => {}
        }
    }
    // Declared before QEMU's guard, so QEMU is killed before the namespace goes.
    let own_tap;
    let tap = match (nic.clone(), options.tap) {
        (Some(NicBackend::Tap), Some(tap)) => Some(tap),
        (Some(NicBackend::Tap), None) => {
            own_tap = TapNet::create()?;
            Some(&own_tap)
        }
        (_, Some(tap)) => {
            return Err(format!(
                "a tap network ({}) was given, but the topology's NIC is not nic = \"tap\"",
                tap.netns()
            ))
        }
        (_, None) => None,
    };
    // Like the namespace, passt goes after QEMU (it also quits by itself when QEMU does).
    let passt = match nic {
        Some(NicBackend::Passt) => Some(PasstNet::start(&options.host_forwards)?),
        _ => None,
    };
    let bundle = match &options.bundle_override {
        Some(bytes) => bytes.clone(),
        None => pack(topology, &artifacts.images).map_err(|e| e.to_string())?,
    };
    let bundle_dir = artifacts.dir.join("bundles");
    std::fs::create_dir_all(&bundle_dir)
        .map_err(|e| format!("cannot create {}: {e}", bundle_dir.display()))?;
    let unique = format!(
        "{}-{}.bundle",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let bundle_path = bundle_dir.join(unique);
    std::fs::write(&bundle_path, &bundle)
        .map_err(|e| format!("cannot write {}: {e}", bundle_path.display()))?;

    let start = Instant::now();
    let program = qemu_program(tap.map(TapNet::netns));
    let mut args = qemu_args(
        topology,
        &artifacts.hypervisor,
        &bundle_path,
        &options.host_forwards,
        passt.as_ref().map(PasstNet::socket),
    );
    if let (Some(_), Some(path)) = (topology.passthrough(), &options.nic_pcap) {
        args.extend(nic_pcap_args(&pcap_file(path)));
    }
    let booted = run(&program, &args, start, options);
    drop(passt);
    let _ = std::fs::remove_file(&bundle_path);
    booted
}

/// How long [`run`] waits for QEMU's vCPU threads to appear before it runs them unpinned.
const PIN_WAIT: Duration = Duration::from_secs(5);

/// Runs QEMU (`program` then `args`, see [`qemu_program`]) with the console on stdout and
/// QEMU's own messages on stderr (prefixed `[qemu] `), feeding each line to `options.on_line`
/// and `options.stop_when` and killing QEMU at the timeout (counted from `start`), at an early
/// stop, or when anything here panics. [`boot`] runs a topology with it; other machines (the
/// bench's stock Linux guest, [`crate::linux_guest`]) use it with their own command line.
pub fn run(
    program: &[String],
    args: &[String],
    start: Instant,
    options: &BootOptions,
) -> Result<Boot, String> {
    let spawned = Command::new(&program[0])
        .args(&program[1..])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return Err(format!(
                "cannot start {} ({e}): run ./run.sh setup",
                program.join(" ")
            ))
        }
    };
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut guard = QemuGuard(child);
    // Before the console is read (and with QEMU's guard in place): QEMU creates its vCPU
    // threads before the guest runs, and the console's first lines wait in the pipe meanwhile.
    let pinned =
        crate::pinning::pin_qemu(guard.0.id(), crate::pinning::vcpus_of_args(args), PIN_WAIT);

    let (tx, rx) = mpsc::channel::<String>();
    let tx_err = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx_err.send(format!("[qemu] {line}")).is_err() {
                break;
            }
        }
    });

    let deadline = start + options.timeout;
    let mut lines = Vec::new();
    // A boot that runs unpinned says so where its failures are read (and on the demo's screen).
    if let Err(why) = pinned {
        let line = format!("[harness] vCPU threads not pinned: {why}");
        if options.echo {
            println!("{line}");
        }
        lines.push(line);
    }
    let (mut timed_out, mut stopped_early) = (false, false);
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(line) => {
                if options.echo {
                    println!("{line}");
                }
                if let Some(on_line) = options.on_line {
                    on_line(&line);
                }
                let stop = options.stop_when.is_some_and(|f| f(&line));
                lines.push(line);
                if stop {
                    stopped_early = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            // Both pipes closed: QEMU exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Both pipes closed without a timeout or early stop: QEMU exited, so reap it.
    let exited = !timed_out && !stopped_early && guard.0.wait().is_ok();
    drop(guard);
    Ok(Boot {
        lines,
        timed_out,
        stopped_early,
        exited,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const PLAIN: &str = r#"
[machine]
cpus = 2
memory_mib = 512

[[vm]]
name = "dd"
kind = "driver-domain"
image = "dd"
memory_mib = 16
vcpus = 1
"#;

    fn topology(dd_extra: &str) -> Topology {
        Topology::from_toml_str(&format!("{PLAIN}{dd_extra}")).unwrap()
    }

    fn args(topology: &Topology, forwards: &[HostForward]) -> Vec<String> {
        qemu_args(
            topology,
            Path::new("/a/hypervisor.bin"),
            Path::new("/b/x.bundle"),
            forwards,
            None,
        )
    }

    /// The command line every topology starts with.
    const PLAIN_ARGS: [&str; 20] = [
        "-M",
        "virt,virtualization=on,gic-version=3",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "512M",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-name",
        "sluice,debug-threads=on",
        "-kernel",
        "/a/hypervisor.bin",
        "-initrd",
        "/b/x.bundle",
    ];

    #[test]
    fn without_passthrough_there_is_no_nic_at_all() {
        let t = topology("");
        let mut expected: Vec<String> = PLAIN_ARGS.iter().map(|s| s.to_string()).collect();
        expected.extend(["-nic", "none"].map(String::from));
        assert_eq!(args(&t, &[]), expected);
        // Forwards without a NIC have nowhere to go; qemu_args ignores them (boot refuses).
        let fwd = HostForward::udp(5555, Ipv4Addr::new(10, 0, 2, 15), 7);
        assert_eq!(args(&t, &[fwd]), expected);
    }

    #[test]
    fn profile_hz_reaches_the_hypervisor_on_the_kernel_command_line() {
        let mut t = topology("");
        assert!(!args(&t, &[]).contains(&"-append".to_string()));
        t.machine.profile_hz = Some(1000);
        let a = args(&t, &[]);
        let at = a.iter().position(|x| x == "-append").unwrap();
        assert_eq!(a[at + 1], "profile_hz=1000");
        // What the hypervisor makes of it.
        assert_eq!(
            shared_abi::profile::from_bootargs(&a[at + 1]),
            Ok(Some(1000))
        );
    }

    #[test]
    fn machine_gic_picks_qemus_gic_version() {
        let mut t = topology("");
        t.machine.gic = 4;
        assert_eq!(args(&t, &[])[1], "virt,virtualization=on,gic-version=4");
        let mut t = topology("passthrough = \"00:02.0\"\n");
        t.machine.gic = 4;
        assert_eq!(
            args(&t, &[])[1],
            "virt,virtualization=on,gic-version=4,iommu=smmuv3"
        );
    }

    #[test]
    fn passthrough_adds_the_smmu_and_the_nic() {
        let t = topology("passthrough = \"00:02.0\"\n");
        let guest = Ipv4Addr::new(10, 0, 2, 15);
        let a = args(
            &t,
            &[
                HostForward::udp(40000, guest, 7),
                HostForward::tcp(40001, guest, 7),
            ],
        );
        let mut expected: Vec<String> = PLAIN_ARGS.iter().map(|s| s.to_string()).collect();
        expected[1] = "virt,virtualization=on,gic-version=3,iommu=smmuv3".into();
        expected.extend(
            [
                "-global",
                "arm-smmuv3.stage=2",
                "-netdev",
                "user,id=nic0,net=10.0.2.0/24,hostfwd=udp:127.0.0.1:40000-10.0.2.15:7,\
                 hostfwd=tcp:127.0.0.1:40001-10.0.2.15:7",
                "-device",
                "virtio-net-pci,netdev=nic0,disable-legacy=on,iommu_platform=on,romfile=,\
                 bus=pcie.0,addr=0x02.0,mac=52:54:00:12:34:56",
            ]
            .map(String::from),
        );
        assert_eq!(a, expected);
    }

    #[test]
    fn nic_address_and_forwards_follow_the_inputs() {
        let t = topology("passthrough = \"00:1f.7\"\n");
        let a = args(&t, &[]);
        let netdev = &a[a.iter().position(|s| s == "-netdev").unwrap() + 1];
        assert_eq!(netdev, "user,id=nic0,net=10.0.2.0/24");
        let device = &a[a.iter().position(|s| s == "-device").unwrap() + 1];
        assert!(device.contains(",addr=0x1f.7,"), "{device}");
        // The explicit "user" gives the same command line as the default.
        let explicit =
            Topology::from_toml_str(&format!("{PLAIN}passthrough = \"00:1f.7\"\n").replacen(
                "memory_mib = 512\n",
                "memory_mib = 512\nnic = \"user\"\n",
                1,
            ))
            .unwrap();
        assert_eq!(args(&explicit, &[]), a);
    }

    #[test]
    fn the_tap_option_attaches_the_nic_to_the_namespaces_tap() {
        let t = Topology::from_toml_str(&format!("{PLAIN}passthrough = \"00:02.0\"\n").replacen(
            "memory_mib = 512\n",
            "memory_mib = 512\nnic = \"tap\"\n",
            1,
        ))
        .unwrap();
        // Same machine and device as with user networking; only the netdev differs, and
        // forwards (a user-networking thing) do not appear.
        let user = args(&topology("passthrough = \"00:02.0\"\n"), &[]);
        let fwd = HostForward::tcp(40001, Ipv4Addr::new(10, 0, 2, 15), 7);
        let tap = args(&t, &[fwd]);
        assert_eq!(tap.len(), user.len());
        let netdev = tap.iter().position(|s| s == "-netdev").unwrap() + 1;
        for (i, (a, b)) in tap.iter().zip(&user).enumerate() {
            if i != netdev {
                assert_eq!(a, b);
            }
        }
        assert_eq!(
            tap[netdev],
            "tap,id=nic0,ifname=sluice-tap,script=no,downscript=no"
        );
        // QEMU itself runs inside the namespace.
        assert_eq!(qemu_program(None), ["qemu-system-aarch64"]);
        assert_eq!(
            qemu_program(Some("sluice-42-0")),
            ["ip", "netns", "exec", "sluice-42-0", "qemu-system-aarch64"]
        );
    }

    #[test]
    fn the_passt_option_connects_the_nic_to_passts_socket() {
        let t = Topology::from_toml_str(&format!("{PLAIN}passthrough = \"00:02.0\"\n").replacen(
            "memory_mib = 512\n",
            "memory_mib = 512\nnic = \"passt\"\n",
            1,
        ))
        .unwrap();
        let user = args(&topology("passthrough = \"00:02.0\"\n"), &[]);
        let fwd = HostForward::tcp(40001, Ipv4Addr::new(10, 0, 2, 15), 7);
        let passt = qemu_args(
            &t,
            Path::new("/a/hypervisor.bin"),
            Path::new("/b/x.bundle"),
            &[fwd],
            Some(Path::new("/tmp/sluice-passt-1-0/passt.sock")),
        );
        // Same machine and device as with user networking; the netdev is passt's socket, and
        // the forwards are passt's business.
        assert_eq!(passt.len(), user.len());
        let netdev = passt.iter().position(|s| s == "-netdev").unwrap() + 1;
        for (i, (a, b)) in passt.iter().zip(&user).enumerate() {
            if i != netdev {
                assert_eq!(a, b);
            }
        }
        assert_eq!(
            passt[netdev],
            "stream,id=nic0,server=off,addr.type=unix,addr.path=/tmp/sluice-passt-1-0/passt.sock"
        );
    }

    #[test]
    fn boot_refuses_forwards_with_the_tap_option() {
        let t = Topology::from_toml_str(&format!("{PLAIN}passthrough = \"00:02.0\"\n").replacen(
            "memory_mib = 512\n",
            "memory_mib = 512\nnic = \"tap\"\n",
            1,
        ))
        .unwrap();
        let artifacts = Artifacts {
            dir: PathBuf::from("/nonexistent"),
            hypervisor: PathBuf::from("/nonexistent/hypervisor.bin"),
            images: HashMap::new(),
        };
        let options = BootOptions {
            host_forwards: vec![HostForward::udp(1, Ipv4Addr::LOCALHOST, 2)],
            ..BootOptions::default()
        };
        let e = boot(&t, &artifacts, &options).unwrap_err();
        assert!(e.starts_with("host forwards are for nic = \"user\""), "{e}");
    }

    #[test]
    fn the_nic_capture_names_the_nics_netdev_and_the_file() {
        assert_eq!(
            nic_pcap_args(Path::new("/tmp/x y/n.pcap")),
            [
                "-object",
                "filter-dump,id=nicdump,netdev=nic0,file=/tmp/x y/n.pcap"
            ]
        );
    }

    #[test]
    fn a_capture_directory_gets_a_file_per_boot() {
        let dir = std::env::temp_dir().join(format!("sluice-pcap-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (pcap_file(&dir), pcap_file(&dir));
        assert_ne!(a, b);
        assert!(
            a.starts_with(&dir) && a.extension().is_some_and(|e| e == "pcap"),
            "{a:?}"
        );
        let file = dir.join("one.pcap");
        assert_eq!(pcap_file(&file), file);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_forward_rendering() {
        let f = HostForward::tcp(8080, Ipv4Addr::new(10, 0, 2, 20), 80);
        assert_eq!(f.to_string(), "tcp:127.0.0.1:8080-10.0.2.20:80");
        assert_eq!(f.proto, Proto::Tcp);
        assert_eq!(
            HostForward::udp(1, Ipv4Addr::new(1, 2, 3, 4), 65535).to_string(),
            "udp:127.0.0.1:1-1.2.3.4:65535"
        );
    }

    #[test]
    fn boot_refuses_forwards_without_a_nic() {
        let artifacts = Artifacts {
            dir: PathBuf::from("/nonexistent"),
            hypervisor: PathBuf::from("/nonexistent/hypervisor.bin"),
            images: HashMap::new(),
        };
        let options = BootOptions {
            host_forwards: vec![HostForward::udp(1, Ipv4Addr::LOCALHOST, 2)],
            ..BootOptions::default()
        };
        let e = boot(&topology(""), &artifacts, &options).unwrap_err();
        assert!(e.contains("no VM of the topology has a passthrough"), "{e}");
    }

    #[test]
    fn default_options_have_no_nic_extras() {
        let o = BootOptions::default();
        assert!(o.host_forwards.is_empty() && o.on_line.is_none() && o.stop_when.is_none());
        let seen = std::cell::RefCell::new(Vec::new());
        let record = |line: &str| seen.borrow_mut().push(line.to_owned());
        let o = BootOptions {
            on_line: Some(&record),
            ..BootOptions::default()
        };
        (o.on_line.unwrap())("[dd] network up");
        assert_eq!(*seen.borrow(), ["[dd] network up"]);
    }
}
