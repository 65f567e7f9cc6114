//! Booting a topology in QEMU: builds its bundle, starts `qemu-system-aarch64` with the
//! hypervisor, streams and records the console, and enforces a hard timeout. QEMU is killed
//! whenever a [`Boot`] ends — by timeout, by an early-stop condition, or by a panic in the caller.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::topology::{pack, Topology};

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
}

impl Default for BootOptions<'_> {
    fn default() -> Self {
        BootOptions {
            timeout: Duration::from_secs(60),
            echo: false,
            stop_when: None,
            bundle_override: None,
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

/// The QEMU command line for a topology.
pub fn qemu_args(topology: &Topology, hypervisor: &Path, bundle: &Path) -> Vec<String> {
    vec![
        "-M".into(),
        "virt,virtualization=on,gic-version=3".into(),
        "-cpu".into(),
        "max".into(),
        "-smp".into(),
        topology.machine.cpus.to_string(),
        "-m".into(),
        format!("{}M", topology.machine.memory_mib),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        "stdio".into(),
        "-kernel".into(),
        hypervisor.display().to_string(),
        "-initrd".into(),
        bundle.display().to_string(),
    ]
}

pub fn boot(
    topology: &Topology,
    artifacts: &Artifacts,
    options: &BootOptions,
) -> Result<Boot, String> {
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
    let mut child = Command::new("qemu-system-aarch64")
        .args(qemu_args(topology, &artifacts.hypervisor, &bundle_path))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-aarch64 ({e}): run ./run.sh setup"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut guard = QemuGuard(child);

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
    let _ = std::fs::remove_file(&bundle_path);
    Ok(Boot {
        lines,
        timed_out,
        stopped_early,
        exited,
        elapsed: start.elapsed(),
    })
}
