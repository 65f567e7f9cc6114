//! The passt networking option (`[machine] nic = "passt"`): the NIC's host side is
//! [passt](https://passt.top), a user-mode network back-end that, unlike QEMU's user networking
//! (slirp), ends the guest's TCP connections in the host's own TCP stack: window scaling, no
//! 64 KiB window, no root needed.
//!
//! [`PasstNet::start`] makes a private directory, starts `passt` in the foreground on a unix
//! socket there, and waits for the socket; QEMU connects to it with `-netdev
//! stream,server=off,addr.type=unix,addr.path=...` (see [`crate::qemu`]). Dropping the
//! [`PasstNet`] kills passt and removes the directory; `boot` drops it right after QEMU, also on
//! a panic. (passt's `--one-off`, quit when the guest goes, makes the Debian 12 passt exit at
//! once, before any guest, so it is not used.)
//!
//! Addressing is set so that the VMs' 10.0.2.0/24 configuration works unchanged (see
//! [`passt_args`]): passt plays 10.0.2.2, the VMs' default gateway, and maps it to the host's
//! loopback as slirp does. Host ports are forwarded with passt's `-t`/`-u` options, from
//! the [`HostForward`]s a boot would give slirp.
//!
//! What passt cannot do for a switch of several endpoints: it is built for one guest. Every
//! frame it sends towards the guest goes to the last IPv4 source address and MAC it saw from
//! the guest side, and a forwarded port goes to that address too (`HostForward::guest_ip` is
//! not used). So on one NIC only the endpoint that spoke last is reachable: a topology where
//! the host talks to the driver domain's endpoint, or to one guest that opened the conversation
//! (an iperf3 client in the guest), works; host checks to two endpoints at once do not.
//! passt answers ICMP echo through "ping" sockets, which need the
//! `net.ipv4.ping_group_range` sysctl to include its group ([`ping_sockets_allowed`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::hostnet::{HostForward, Proto};

/// The passt binary (Debian package `passt`).
pub const PASST: &str = "passt";
/// The address passt hands out and first sends to: the driver domain's endpoint.
pub const PASST_GUEST_ADDRESS: &str = "10.0.2.15";
/// The VMs' default gateway, which passt plays.
pub const PASST_GATEWAY: &str = "10.0.2.2";
/// The subnet's prefix length.
pub const PASST_PREFIX_LEN: u8 = 24;
/// The MTU: the NIC's receive buffers hold a 1514-byte frame.
pub const PASST_MTU: u16 = 1500;
/// How long passt may take to create its socket.
const START_LIMIT: Duration = Duration::from_secs(10);
/// The user and group passt runs as when started as root (`nobody`).
const PASST_GID: u32 = 65534;

/// passt's command line: foreground, IPv4 only, quiet, socket at `socket`; the VMs' addressing; one `-t`/`-u` per forward (`HOST:GUEST` ports).
pub fn passt_args(socket: &Path, forwards: &[HostForward]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--foreground",
        "--stderr",
        "--quiet",
        "--ipv4-only",
        "--address",
        PASST_GUEST_ADDRESS,
        "--netmask",
        &PASST_PREFIX_LEN.to_string(),
        "--gateway",
        PASST_GATEWAY,
        "--mtu",
        &PASST_MTU.to_string(),
        "--socket",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(socket.display().to_string());
    for forward in forwards {
        args.push(
            match forward.proto {
                Proto::Tcp => "-t",
                Proto::Udp => "-u",
            }
            .to_string(),
        );
        args.push(format!("{}:{}", forward.host_port, forward.guest_port));
    }
    args
}

/// Whether passt can create ICMP "ping" sockets: `range` is the content of
/// `/proc/sys/net/ipv4/ping_group_range` ("first last"), and passt runs as group `nobody`.
pub fn ping_sockets_allowed(range: &str) -> bool {
    let mut parts = range.split_whitespace().map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(first)), Some(Ok(last))) => first <= PASST_GID && PASST_GID <= last,
        _ => false,
    }
}

/// [`ping_sockets_allowed`] for this host.
pub fn host_ping_sockets_allowed() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range")
        .is_ok_and(|range| ping_sockets_allowed(&range))
}

/// `Ok` when passt is installed and runs; the error says what to do.
pub fn passt_support() -> Result<(), String> {
    match Command::new(PASST)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "the passt option needs the passt binary ({e}): run ./run.sh setup (Debian package \
             passt)"
        )),
    }
}

/// A running passt and its private directory; dropping it kills passt and removes the
/// directory.
pub struct PasstNet {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl PasstNet {
    /// Starts passt with `forwards` and waits until its socket exists.
    pub fn start(forwards: &[HostForward]) -> Result<PasstNet, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-passt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // Started as root, passt becomes `nobody` before it binds its socket, so the directory
        // must be nobody's then (not being root, chown fails and the directory is ours anyway).
        let _ = std::os::unix::fs::chown(&dir, Some(PASST_GID), Some(PASST_GID));
        let socket = dir.join("passt.sock");
        let log = dir.join("passt.log");
        let stderr = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let child = Command::new(PASST)
            .args(passt_args(&socket, forwards))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!(
                    "cannot start {PASST} ({e}): run ./run.sh setup (Debian package passt)"
                ));
            }
        };
        // From here on, Drop cleans up.
        let mut passt = PasstNet { child, dir, socket };
        let start = Instant::now();
        while !passt.socket.exists() {
            if let Ok(Some(status)) = passt.child.try_wait() {
                return Err(format!(
                    "passt exited ({status}) before creating its socket: {}",
                    std::fs::read_to_string(&log)
                        .unwrap_or_default()
                        .trim()
                        .replace('\n', "; ")
                ));
            }
            if start.elapsed() > START_LIMIT {
                return Err(format!(
                    "passt did not create {} within {START_LIMIT:?}",
                    passt.socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(passt)
    }

    /// The unix socket QEMU connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for PasstNet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn the_command_line_sets_the_vms_addressing_and_the_forwards() {
        let guest = Ipv4Addr::new(10, 0, 2, 16);
        let args = passt_args(
            Path::new("/tmp/d/passt.sock"),
            &[
                HostForward::tcp(40001, guest, 7),
                HostForward::udp(40002, guest, 5201),
            ],
        );
        let joined = args.join(" ");
        assert_eq!(
            joined,
            "--foreground --stderr --quiet --ipv4-only --address 10.0.2.15 \
             --netmask 24 --gateway 10.0.2.2 --mtu 1500 --socket /tmp/d/passt.sock \
             -t 40001:7 -u 40002:5201"
        );
        // Without forwards the command line ends with the socket.
        let plain = passt_args(Path::new("/x.sock"), &[]);
        assert_eq!(plain.last().map(String::as_str), Some("/x.sock"));
        assert!(!plain.iter().any(|a| a == "-t" || a == "-u"));
    }

    #[test]
    fn ping_sockets_need_nobody_in_the_group_range() {
        assert!(!ping_sockets_allowed("1\t0\n"));
        assert!(ping_sockets_allowed("0\t2147483647\n"));
        assert!(ping_sockets_allowed("65534 65534"));
        assert!(!ping_sockets_allowed("0 65533"));
        assert!(!ping_sockets_allowed(""));
        assert!(!ping_sockets_allowed("x y"));
    }

    #[test]
    fn passt_starts_on_its_socket_and_is_gone_with_its_directory_when_dropped() {
        // ./run.sh setup installs passt; the host tests need it like they need iperf3.
        passt_support().unwrap();
        let forward = HostForward::tcp(
            crate::net::free_port(Proto::Tcp),
            Ipv4Addr::new(10, 0, 2, 15),
            7,
        );
        let passt = PasstNet::start(&[forward]).unwrap();
        let socket = passt.socket().to_path_buf();
        let dir = passt.dir.clone();
        let pid = passt.child.id();
        assert!(socket.exists());
        // passt listens on the forwarded port for the guest.
        assert!(std::net::TcpStream::connect(("127.0.0.1", forward.host_port)).is_ok());
        drop(passt);
        assert!(!dir.exists(), "{} left behind", dir.display());
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z "),
            "passt {pid} still runs: {state}"
        );
    }
}
