//! Topology files: the user's TOML description of the machine and its VMs, its validation, and
//! [`pack`], which turns a topology plus built images into a boot bundle.
//!
//! Validation here mirrors what the hypervisor enforces on the bundle, but reports problems in
//! the user's terms (VM name, TOML field) instead of bundle offsets.
//!
//! Connections are part of the topology: a guest's optional `backend = "<vm name>"` names the
//! driver domain it connects to as a front-end. It is checked here by name (the VM exists, is a
//! driver domain, is not the guest itself; driver domains have no backend) and [`pack`] turns the
//! name into the VM id the bundle stores.
//!
//! A guest's NIC is para-virtual unless it says `nic = "emulated"` ([`GuestNic`]): then its
//! back-end serves it as an emulated register-FIFO NIC (`shared_abi::emunic`). Only a guest with
//! a backend can have one; the packer sets the bundle's `EMULATED_NIC` flag, gives the guest the
//! setting `nic=emulated` and marks its entry in the driver domain's `frontends` list.
//!
//! Device passthrough is part of the topology too: a driver domain's optional
//! `passthrough = "00:02.0"` names the PCI function (bus:device.function, hex) it owns behind the
//! SMMU, and `[machine] nic` says how the QEMU NIC placed at that address reaches the host
//! ([`NicBackend`]: `"user"`, the default, `"passt"` or `"tap"`). The machine has one NIC,
//! so at most one VM has a passthrough, on QEMU virt's root bus (`00`), never in the host
//! bridge's slot (`00:00`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use shared_abi::balloon;
use shared_abi::bundle::builder::{self, VmDescription};
use shared_abi::bundle::{self, BundleError, NameProblem, VmKind};
use shared_abi::grant::MAPPING_HEAP_BYTES;
use shared_abi::identity::{self, Identity};
use shared_abi::layout::{MAX_SETTINGS_LEN, MAX_VCPUS_PER_VM, MAX_VMS, MAX_VM_RAM, MIN_VM_RAM};
pub use shared_abi::pci::{Bdf, BdfError};

const MIB: u64 = 1024 * 1024;
/// Machine memory set aside for the hypervisor itself (image, heap, page tables).
pub const HYPERVISOR_RESERVED_MIB: u64 = 64;
/// QEMU `-smp` values the hypervisor is built for.
pub const MAX_MACHINE_CPUS: u32 = 8;

/// VM memory granularity in MiB; VM RAM is mapped with 2 MiB stage-2 blocks.
const VM_MEMORY_STEP_MIB: u64 = shared_abi::layout::BLOCK_SIZE / MIB;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub cpus: u32,
    pub memory_mib: u64,
    /// The NIC's host side. `Some` exactly when a VM has a passthrough (a topology file that
    /// has one but no `nic` key gets [`NicBackend::User`]); `None`: no NIC at all.
    pub nic: Option<NicBackend>,
    /// QEMU virt's `gic-version` (`[machine] gic`, 3 or 4, default 3): with 4 the GIC is a
    /// GICv4.0 whose ITS can inject the NIC's MSIs as vLPIs (docs/ARCHITECTURE.md, "GICv4
    /// direct injection"); with 3 the NIC stays on INTx.
    pub gic: u8,
    /// The hypervisor's guest-PC sampling rate per pCPU (`[machine] profile_hz`,
    /// `shared_abi::profile`); `None`: no sampling.
    pub profile_hz: Option<u32>,
}

/// `[machine] gic` values QEMU virt's TCG GIC offers with virtualization=on.
pub const GIC_VERSIONS: [u8; 2] = [3, 4];

/// How the QEMU NIC that a driver domain owns reaches the host network (`[machine] nic`).
///
/// Either way the VMs see the same network: 10.0.2.0/24 with the host side at 10.0.2.2, their
/// default gateway. `"tap:IFNAME"` (an existing host interface) is not supported: the harness
/// always makes its own tap, in a namespace nothing else uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NicBackend {
    /// QEMU user networking (slirp): no privileges needed; the guest network is
    /// `10.0.2.0/24` and the harness forwards host ports on 127.0.0.1 to it per boot.
    User,
    /// A tap device in a fresh network namespace ([`crate::tap`]): the tap is 10.0.2.2/24,
    /// QEMU and the host's tools run inside the namespace and reach the VMs at their own
    /// addresses (the real `ping`, `iperf3`, std sockets). Needs root and /dev/net/tun.
    Tap,
    /// passt ([`crate::passt`]), a user-mode back-end with a real TCP stack on the host side
    /// (window scaling, no 64 KiB window): no privileges needed; host ports are forwarded like
    /// with user networking. passt talks to one guest address, the last it saw sending.
    Passt,
}

impl NicBackend {
    /// Parses the `nic` value; the error is the whole user-facing explanation.
    pub fn parse(text: &str) -> Result<NicBackend, String> {
        match text {
            "user" => Ok(NicBackend::User),
            "tap" => Ok(NicBackend::Tap),
            "passt" => Ok(NicBackend::Passt),
            _ if text.starts_with("tap:") => Err(
                "an existing tap interface is not supported; nic = \"tap\" makes its own in a \
                 network namespace of its own"
                    .to_owned(),
            ),
            _ => Err(
                "must be \"user\" (QEMU user networking), \"passt\" (passt, user mode) or \"tap\" \
                 (a tap device in a network namespace; needs root)"
                    .to_owned(),
            ),
        }
    }

    /// The spelling in topology files.
    pub fn as_str(&self) -> &'static str {
        match self {
            NicBackend::User => "user",
            NicBackend::Tap => "tap",
            NicBackend::Passt => "passt",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmDef {
    pub name: String,
    pub kind: VmKind,
    pub image: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// In file order, values already rendered as text.
    pub settings: Vec<(String, String)>,
    /// Name of the driver domain this guest connects to; `None` for driver domains and for
    /// guests without a connection.
    pub backend: Option<String>,
    /// The PCI function this driver domain owns (`passthrough = "00:02.0"`); `None` for guests
    /// and for driver domains without a device.
    pub passthrough: Option<Bdf>,
    /// The guest's NIC (`nic = "emulated" | "paravirt"`, default para-virtual).
    pub nic: GuestNic,
}

/// A guest's NIC, the VM field `nic`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GuestNic {
    /// The split driver: rings and grants, one event now and then (the default).
    #[default]
    Paravirt,
    /// The emulated register-FIFO NIC: every register access traps to the device model.
    Emulated,
}

impl GuestNic {
    /// The guest setting that tells the guest which NIC driver to run.
    pub const SETTING: &'static str = "nic";

    pub fn parse(text: &str) -> Option<GuestNic> {
        match text {
            "paravirt" => Some(GuestNic::Paravirt),
            "emulated" => Some(GuestNic::Emulated),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GuestNic::Paravirt => "paravirt",
            GuestNic::Emulated => "emulated",
        }
    }
}

impl VmDef {
    /// The settings as the VM receives them: one `key=value\n` line each.
    pub fn settings_text(&self) -> String {
        self.settings
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }

    /// The value of setting `key`, if the VM has it.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The VM's address on the NIC's network: the address part of its `ip` setting
    /// (`ip = "10.0.2.16/24"`), or for a driver domain without one the address it defaults to
    /// ([`DRIVER_DOMAIN_IP`](crate::hostnet::DRIVER_DOMAIN_IP)). `Err` says what is wrong: no `ip`
    /// on a guest, or a value that is not an IPv4 address with an optional prefix length.
    pub fn ip(&self) -> Result<Ipv4Addr, String> {
        let Some(text) = self.setting("ip") else {
            return match self.kind {
                VmKind::DriverDomain => Ok(crate::hostnet::DRIVER_DOMAIN_IP),
                VmKind::Guest => Err(format!(
                    "vm {:?} has no ip setting (like ip = \"10.0.2.16/24\")",
                    self.name
                )),
            };
        };
        let (address, prefix) = text.split_once('/').unwrap_or((text, "32"));
        match (address.parse(), prefix.parse::<u8>()) {
            (Ok(ip), Ok(0..=32)) => Ok(ip),
            _ => Err(format!(
                "vm {:?}: ip = {text:?} is not an IPv4 address like \"10.0.2.16/24\"",
                self.name
            )),
        }
    }

    /// The VM's default gateway: its `gateway` setting, else QEMU user networking's host side
    /// ([`DEFAULT_GATEWAY`](crate::hostnet::DEFAULT_GATEWAY)). A malformed value is returned as
    /// `Err` with the reason.
    pub fn gateway(&self) -> Result<Ipv4Addr, String> {
        match self.setting("gateway") {
            None => Ok(crate::hostnet::DEFAULT_GATEWAY),
            Some(text) => text.parse().map_err(|_| {
                format!(
                    "vm {:?}: gateway = {text:?} is not an IPv4 address",
                    self.name
                )
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub machine: Machine,
    pub vms: Vec<VmDef>,
}

#[derive(Debug)]
pub enum TopologyError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type, a missing or an unknown field.
    Syntax(toml::de::Error),
    MachineCpus {
        cpus: u32,
    },
    NoVms,
    TooManyVms {
        count: usize,
    },
    /// `index` is the 0-based position of the `[[vm]]` table, since the name itself is bad.
    Name {
        index: usize,
        name: String,
        problem: NameProblem,
    },
    DuplicateName {
        name: String,
    },
    MemoryNotMultiple {
        vm: String,
        memory_mib: u64,
    },
    MemoryOutOfRange {
        vm: String,
        memory_mib: u64,
    },
    Vcpus {
        vm: String,
        vcpus: u32,
    },
    EmptyImage {
        vm: String,
    },
    SettingKey {
        vm: String,
        key: String,
    },
    SettingValue {
        vm: String,
        key: String,
    },
    SettingsTooLong {
        vm: String,
        len: usize,
    },
    /// The VM's own settings fit, but not with the line the packer adds to them (`line`: a
    /// driver domain's `frontends`, an emulated-NIC guest's `nic`); `len` is the packed total.
    PackedSettingsTooLong {
        vm: String,
        own: usize,
        line: &'static str,
        len: usize,
    },
    /// The VMs' grant-mapping budgets could need more hypervisor heap than is set aside for
    /// them (`shared_abi::bundle::mapping_heap_bytes`): the hypervisor would refuse the bundle.
    MappingBudgets {
        driver_domains: usize,
        guests: usize,
        needed_kib: u64,
    },
    OutOfMemory {
        total_mib: u64,
        machine_mib: u64,
    },
    /// `backend` names no VM of the topology.
    UnknownBackend {
        vm: String,
        backend: String,
    },
    /// `backend` names a VM that is not a driver domain.
    BackendNotDriverDomain {
        vm: String,
        backend: String,
    },
    /// A driver domain has a `backend`; only guests connect to one.
    BackendOnDriverDomain {
        vm: String,
        backend: String,
    },
    /// `backend` names the VM itself.
    BackendIsSelf {
        vm: String,
    },
    /// `passthrough` is not a PCI address.
    PassthroughSyntax {
        vm: String,
        value: String,
        problem: BdfError,
    },
    /// A guest has a `passthrough`; only driver domains own devices.
    PassthroughOnGuest {
        vm: String,
        bdf: Bdf,
    },
    /// `passthrough` is in slot `00:00`, the host bridge's.
    PassthroughHostBridge {
        vm: String,
        bdf: Bdf,
    },
    /// `passthrough` is on a bus other than 0; QEMU virt's NIC sits on the root bus.
    PassthroughNotRootBus {
        vm: String,
        bdf: Bdf,
    },
    /// Two VMs name the same function.
    DuplicatePassthrough {
        first: String,
        second: String,
        bdf: Bdf,
    },
    /// Two VMs have a passthrough, but the machine has one NIC.
    TooManyPassthroughs {
        first: String,
        second: String,
    },
    /// `[machine] nic` is not one of the back-ends ("user", "passt", "tap").
    Nic {
        value: String,
        problem: String,
    },
    /// `[machine] nic` is given but no VM has a passthrough, so there is no NIC to connect.
    NicWithoutPassthrough {
        nic: String,
    },
    /// `[machine] gic` is neither 3 nor 4.
    Gic {
        gic: u8,
    },
    /// `[machine] profile_hz` is out of range.
    ProfileHz(shared_abi::profile::ProfileHzError),
    /// The identities of a driver domain's front-ends clash (two guests with one MAC or
    /// address), or its settings already have the key the packer writes them under.
    Identities {
        vm: String,
        problem: String,
    },
    /// A VM's `balloon_schedule` or (driver domains only) `balloon_control` setting is refused
    /// by shared-abi's parser, or `balloon_control` is on a guest.
    Balloon {
        vm: String,
        key: &'static str,
        problem: String,
    },
    /// A VM's `nic` is not "emulated" or "paravirt", is on a driver domain, or is "emulated"
    /// on a guest without a backend (no device model), or the guest's settings have the key
    /// the packer writes it under.
    GuestNic {
        vm: String,
        problem: String,
    },
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TopologyError::*;
        match self {
            Io { path, source } => write!(f, "cannot read topology {}: {source}", path.display()),
            Syntax(e) => write!(f, "invalid topology: {e}"),
            MachineCpus { cpus } => {
                write!(f, "machine.cpus = {cpus}: must be 1..={MAX_MACHINE_CPUS}")
            }
            NoVms => f.write_str("the topology has no [[vm]] tables; add at least one VM"),
            TooManyVms { count } => write!(
                f,
                "the topology has {count} VMs; at most {MAX_VMS} are supported"
            ),
            Name {
                index,
                name,
                problem,
            } => write!(
                f,
                "[[vm]] number {}: name = {name:?}: {problem} (use 1..=31 of [a-z0-9-])",
                index + 1
            ),
            DuplicateName { name } => write!(
                f,
                "vm {name:?}: name is used by more than one VM; names must be unique"
            ),
            MemoryNotMultiple { vm, memory_mib } => write!(
                f,
                "vm {vm:?}: memory_mib = {memory_mib} must be a multiple of \
                 {VM_MEMORY_STEP_MIB} (VM RAM is mapped in {VM_MEMORY_STEP_MIB} MiB blocks)"
            ),
            MemoryOutOfRange { vm, memory_mib } => write!(
                f,
                "vm {vm:?}: memory_mib = {memory_mib} must be {}..={}",
                MIN_VM_RAM / MIB,
                MAX_VM_RAM / MIB
            ),
            Vcpus { vm, vcpus } => write!(
                f,
                "vm {vm:?}: vcpus = {vcpus} must be 1..={MAX_VCPUS_PER_VM}"
            ),
            EmptyImage { vm } => write!(f, "vm {vm:?}: image must name a built image"),
            SettingKey { vm, key } => write!(
                f,
                "vm {vm:?}: settings key {key:?} may only contain [a-z0-9_] and must not be empty"
            ),
            SettingValue { vm, key } => {
                write!(f, "vm {vm:?}: settings.{key} must not contain a line break")
            }
            Balloon { vm, key, problem } => write!(
                f,
                "vm {vm:?}: settings.{key}: {problem} (targets are ms:MiB points, see \
                 docs/ARCHITECTURE.md \"The balloon\")"
            ),
            SettingsTooLong { vm, len } => write!(
                f,
                "vm {vm:?}: settings come to {len} bytes as key=value lines; at most \
                 {MAX_SETTINGS_LEN} are allowed"
            ),
            PackedSettingsTooLong { vm, own, line, len } => write!(
                f,
                "vm {vm:?}: settings come to {own} bytes as key=value lines, {len} with the {line} \
                 line the packer adds; at most {MAX_SETTINGS_LEN} are allowed, shorten the settings"
            ),
            MappingBudgets {
                driver_domains,
                guests,
                needed_kib,
            } => write!(
                f,
                "{driver_domains} driver domain(s) and {guests} guest(s) could need {needed_kib} \
                 KiB of hypervisor heap for their grant mappings, more than the {} KiB set aside \
                 for them (each driver domain {} KiB, each guest {} KiB); use fewer driver domains",
                MAPPING_HEAP_BYTES >> 10,
                bundle::mapping_heap_bytes([VmKind::DriverDomain]) >> 10,
                bundle::mapping_heap_bytes([VmKind::Guest]) >> 10,
            ),
            OutOfMemory {
                total_mib,
                machine_mib,
            } => write!(
                f,
                "VMs need {total_mib} MiB in total but machine.memory_mib = {machine_mib} leaves \
                 only {} MiB after the {HYPERVISOR_RESERVED_MIB} MiB reserved for the \
                 hypervisor; raise machine.memory_mib or shrink the VMs",
                machine_mib.saturating_sub(HYPERVISOR_RESERVED_MIB)
            ),
            UnknownBackend { vm, backend } => write!(
                f,
                "vm {vm:?}: backend = {backend:?} is not the name of any VM in this topology"
            ),
            BackendNotDriverDomain { vm, backend } => write!(
                f,
                "vm {vm:?}: backend = {backend:?} is a guest; a backend must be a VM of kind \
                 \"driver-domain\""
            ),
            BackendOnDriverDomain { vm, backend } => write!(
                f,
                "vm {vm:?}: is a driver domain but has backend = {backend:?}; only guests \
                 connect to a backend, remove the field"
            ),
            BackendIsSelf { vm } => write!(
                f,
                "vm {vm:?}: backend names the VM itself; it must name a driver domain"
            ),
            PassthroughSyntax { vm, value, problem } => {
                write!(f, "vm {vm:?}: passthrough = {value:?}: {problem}")
            }
            PassthroughOnGuest { vm, bdf } => write!(
                f,
                "vm {vm:?}: passthrough = \"{bdf}\" on a guest; only a VM of kind \
                 \"driver-domain\" owns a device, remove the field or change the kind"
            ),
            PassthroughHostBridge { vm, bdf } => write!(
                f,
                "vm {vm:?}: passthrough = \"{bdf}\" is in slot 00:00, which holds the host \
                 bridge; use another device number, e.g. \"00:02.0\""
            ),
            PassthroughNotRootBus { vm, bdf } => write!(
                f,
                "vm {vm:?}: passthrough = \"{bdf}\": the bus must be 00 (the NIC is placed on \
                 QEMU virt's root bus, pcie.0)"
            ),
            DuplicatePassthrough { first, second, bdf } => write!(
                f,
                "vm {second:?}: passthrough = \"{bdf}\" is already given to vm {first:?}; a PCI \
                 function is passed to one VM only"
            ),
            TooManyPassthroughs { first, second } => write!(
                f,
                "vm {second:?}: has a passthrough, but vm {first:?} already has one and the \
                 machine has a single NIC; remove one of them"
            ),
            Nic { value, problem } => write!(f, "machine.nic = {value:?}: {problem}"),
            ProfileHz(e) => write!(f, "machine.{e}"),
            Gic { gic } => write!(
                f,
                "machine.gic = {gic}: must be 3 (GICv3, the NIC on INTx) or 4 (GICv4.0, the NIC's \
                 MSIs as vLPIs)"
            ),
            NicWithoutPassthrough { nic } => write!(
                f,
                "machine.nic = {nic:?}, but no VM has a passthrough; the NIC only exists for a \
                 driver domain with passthrough = \"bb:dd.f\", remove machine.nic or add one"
            ),
            Identities { vm, problem } => write!(f, "vm {vm:?}: {problem}"),
            GuestNic { vm, problem } => write!(f, "vm {vm:?}: {problem}"),
        }
    }
}

impl std::error::Error for TopologyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TopologyError::Io { source, .. } => Some(source),
            TopologyError::Syntax(e) => Some(e),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    machine: RawMachine,
    #[serde(default)]
    vm: Vec<RawVm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    cpus: u32,
    memory_mib: u64,
    #[serde(default)]
    nic: Option<String>,
    #[serde(default)]
    gic: Option<u8>,
    #[serde(default)]
    profile_hz: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: String,
    kind: RawKind,
    image: String,
    memory_mib: u64,
    vcpus: u32,
    #[serde(default)]
    settings: RawSettings,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    passthrough: Option<String>,
    #[serde(default)]
    nic: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawKind {
    Guest,
    DriverDomain,
}

/// Settings in file order; serde's map types would either sort them or drop the order.
#[derive(Default)]
struct RawSettings(Vec<(String, String)>);

impl<'de> Deserialize<'de> for RawSettings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SettingsVisitor;
        impl<'de> Visitor<'de> for SettingsVisitor {
            type Value = RawSettings;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of key = value settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSettings, A::Error> {
                let mut out = Vec::new();
                while let Some((key, SettingValue(value))) = map.next_entry()? {
                    out.push((key, value));
                }
                Ok(RawSettings(out))
            }
        }
        deserializer.deserialize_map(SettingsVisitor)
    }
}

/// One setting value rendered as the text the VM will see.
struct SettingValue(String);

impl<'de> Deserialize<'de> for SettingValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl Visitor<'_> for ValueVisitor {
            type Value = SettingValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, integer or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SettingValue, E> {
                Ok(SettingValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

impl Topology {
    pub fn from_toml_str(text: &str) -> Result<Topology, TopologyError> {
        let raw: RawTopology = toml::from_str(text).map_err(TopologyError::Syntax)?;
        let vms = raw
            .vm
            .into_iter()
            .map(|vm| {
                let passthrough = match vm.passthrough {
                    None => None,
                    Some(value) => Some(Bdf::parse(&value).map_err(|problem| {
                        TopologyError::PassthroughSyntax {
                            vm: vm.name.clone(),
                            value,
                            problem,
                        }
                    })?),
                };
                let nic = match vm.nic {
                    None => GuestNic::Paravirt,
                    Some(value) => {
                        GuestNic::parse(&value).ok_or_else(|| TopologyError::GuestNic {
                            vm: vm.name.clone(),
                            problem: format!("nic = {value:?} is not \"emulated\" or \"paravirt\""),
                        })?
                    }
                };
                let kind = match vm.kind {
                    RawKind::Guest => VmKind::Guest,
                    RawKind::DriverDomain => VmKind::DriverDomain,
                };
                if kind == VmKind::DriverDomain && nic == GuestNic::Emulated {
                    return Err(TopologyError::GuestNic {
                        vm: vm.name.clone(),
                        problem: "nic = \"emulated\" is for guests; a driver domain's NIC is \
                                  set with passthrough"
                            .into(),
                    });
                }
                Ok(VmDef {
                    name: vm.name,
                    kind,
                    image: vm.image,
                    memory_mib: vm.memory_mib,
                    vcpus: vm.vcpus,
                    settings: vm.settings.0,
                    backend: vm.backend,
                    passthrough,
                    nic,
                })
            })
            .collect::<Result<Vec<_>, TopologyError>>()?;
        let any_passthrough = vms.iter().any(|vm| vm.passthrough.is_some());
        let nic = match raw.machine.nic {
            Some(value) if !any_passthrough => {
                return Err(TopologyError::NicWithoutPassthrough { nic: value })
            }
            Some(value) => Some(
                NicBackend::parse(&value)
                    .map_err(|problem| TopologyError::Nic { value, problem })?,
            ),
            None if any_passthrough => Some(NicBackend::User),
            None => None,
        };
        let gic = raw.machine.gic.unwrap_or(3);
        if !GIC_VERSIONS.contains(&gic) {
            return Err(TopologyError::Gic { gic });
        }
        let profile_hz = raw
            .machine
            .profile_hz
            .map(shared_abi::profile::check_hz)
            .transpose()
            .map_err(TopologyError::ProfileHz)?;
        let topology = Topology {
            machine: Machine {
                cpus: raw.machine.cpus,
                memory_mib: raw.machine.memory_mib,
                nic,
                gic,
                profile_hz,
            },
            vms,
        };
        topology.validate()?;
        Ok(topology)
    }

    /// The VM that owns the machine's NIC and the PCI address the NIC is placed at, if any.
    pub fn passthrough(&self) -> Option<(&VmDef, Bdf)> {
        self.vms
            .iter()
            .find_map(|vm| vm.passthrough.map(|bdf| (vm, bdf)))
    }

    pub fn from_file(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Io {
            path: path.to_owned(),
            source,
        })?;
        Topology::from_toml_str(&text)
    }

    fn validate(&self) -> Result<(), TopologyError> {
        let cpus = self.machine.cpus;
        if !(1..=MAX_MACHINE_CPUS).contains(&cpus) {
            return Err(TopologyError::MachineCpus { cpus });
        }
        if self.vms.is_empty() {
            return Err(TopologyError::NoVms);
        }
        if self.vms.len() > MAX_VMS {
            return Err(TopologyError::TooManyVms {
                count: self.vms.len(),
            });
        }
        let mut names = HashSet::new();
        for (index, vm) in self.vms.iter().enumerate() {
            vm.validate(index)?;
            if !names.insert(vm.name.as_str()) {
                return Err(TopologyError::DuplicateName {
                    name: vm.name.clone(),
                });
            }
        }
        // After the name checks, so a backend is looked up among valid, unique names.
        for vm in &self.vms {
            vm.validate_backend(&self.vms)?;
            vm.validate_nic()?;
        }
        self.validate_passthrough()?;
        // The bundle's settings limit applies to what the packer writes, which is more than the
        // VM's own settings (VmDef::validate checks those): a driver domain also gets its
        // front-ends' identities (checked on the way), an emulated-NIC guest `nic=emulated`.
        for vm in &self.vms {
            let len = self.packed_settings(vm)?.len();
            if len > MAX_SETTINGS_LEN {
                return Err(TopologyError::PackedSettingsTooLong {
                    vm: vm.name.clone(),
                    own: vm.settings_text().len(),
                    line: match vm.kind {
                        VmKind::DriverDomain => identity::SETTING,
                        VmKind::Guest => GuestNic::SETTING,
                    },
                    len,
                });
            }
        }
        let needed = bundle::mapping_heap_bytes(self.vms.iter().map(|vm| vm.kind));
        if needed > MAPPING_HEAP_BYTES {
            let driver_domains = self
                .vms
                .iter()
                .filter(|vm| vm.kind == VmKind::DriverDomain)
                .count();
            return Err(TopologyError::MappingBudgets {
                driver_domains,
                guests: self.vms.len() - driver_domains,
                needed_kib: needed >> 10,
            });
        }
        // Each VM is at most MAX_VM_RAM and there are at most MAX_VMS, so this cannot overflow.
        let total_mib: u64 = self.vms.iter().map(|vm| vm.memory_mib).sum();
        let available = self
            .machine
            .memory_mib
            .saturating_sub(HYPERVISOR_RESERVED_MIB);
        if total_mib > available {
            return Err(TopologyError::OutOfMemory {
                total_mib,
                machine_mib: self.machine.memory_mib,
            });
        }
        Ok(())
    }

    /// The identities of the guests whose back-end is driver domain `dd`, in VM id order: the
    /// MAC of the guest's `mac` setting (else [`identity::default_mac`] of its id) and the
    /// address of its `ip` setting. A setting the guest cannot use either is left out here
    /// (the default MAC, no address): the guest refuses it with its own message.
    pub fn frontend_identities(&self, dd: &str) -> Vec<Identity> {
        self.vms
            .iter()
            .enumerate()
            .filter(|(_, vm)| vm.backend.as_deref() == Some(dd))
            .map(|(index, vm)| {
                // At most MAX_VMS VMs, so the id fits.
                let id = (index + 1) as u16;
                let mac = vm
                    .setting("mac")
                    .and_then(identity::parse_mac)
                    .filter(|&m| identity::is_unicast(m))
                    .unwrap_or(identity::default_mac(id));
                let ip = vm.setting("ip").and(vm.ip().ok()).map(|ip| ip.octets());
                Identity {
                    vm: id,
                    mac,
                    ip,
                    emulated: vm.nic == GuestNic::Emulated,
                }
            })
            .collect()
    }

    /// The settings VM `vm` boots with: its own, for a driver domain the identities of its
    /// front-ends (see [`frontend_identities`](Self::frontend_identities)), and for a guest
    /// with the emulated NIC `nic=emulated`.
    pub fn packed_settings(&self, vm: &VmDef) -> Result<String, TopologyError> {
        let own = vm.settings_text();
        match vm.kind {
            VmKind::DriverDomain => Ok(own + &self.frontends_setting(vm)?),
            VmKind::Guest if vm.nic == GuestNic::Emulated => Ok(format!(
                "{own}{}={}\n",
                GuestNic::SETTING,
                GuestNic::Emulated.name()
            )),
            VmKind::Guest => Ok(own),
        }
    }

    /// The line the packer adds to driver domain `dd`'s settings (empty without front-ends),
    /// checked: no two guests share a MAC or an address, and `dd` does not set the key itself.
    fn frontends_setting(&self, dd: &VmDef) -> Result<String, TopologyError> {
        let problem = |problem: String| TopologyError::Identities {
            vm: dd.name.clone(),
            problem,
        };
        if dd.setting(identity::SETTING).is_some() {
            return Err(problem(format!(
                "setting {} is reserved: the packer writes the front-ends' identities there",
                identity::SETTING
            )));
        }
        let list = self.frontend_identities(&dd.name);
        if list.is_empty() {
            return Ok(String::new());
        }
        let value = list
            .iter()
            .map(Identity::to_string)
            .collect::<Vec<_>>()
            .join(",");
        identity::check_list(&value).map_err(|e| problem(e.to_string()))?;
        Ok(format!("{}={value}\n", identity::SETTING))
    }

    /// Each passthrough on its own (kind, address), then across VMs: one function per VM, one
    /// NIC per machine.
    fn validate_passthrough(&self) -> Result<(), TopologyError> {
        let mut owner: Option<(&VmDef, Bdf)> = None;
        for vm in &self.vms {
            let Some(bdf) = vm.passthrough else {
                continue;
            };
            let name = || vm.name.clone();
            if vm.kind != VmKind::DriverDomain {
                return Err(TopologyError::PassthroughOnGuest { vm: name(), bdf });
            }
            if bdf.bus() == 0 && bdf.device() == 0 {
                return Err(TopologyError::PassthroughHostBridge { vm: name(), bdf });
            }
            if bdf.bus() != 0 {
                return Err(TopologyError::PassthroughNotRootBus { vm: name(), bdf });
            }
            match owner {
                None => owner = Some((vm, bdf)),
                Some((first, other)) if other == bdf => {
                    return Err(TopologyError::DuplicatePassthrough {
                        first: first.name.clone(),
                        second: name(),
                        bdf,
                    })
                }
                Some((first, _)) => {
                    return Err(TopologyError::TooManyPassthroughs {
                        first: first.name.clone(),
                        second: name(),
                    })
                }
            }
        }
        Ok(())
    }
}

impl VmDef {
    fn validate(&self, index: usize) -> Result<(), TopologyError> {
        let vm = || self.name.clone();
        bundle::check_vm_name(&self.name).map_err(|problem| TopologyError::Name {
            index,
            name: self.name.clone(),
            problem,
        })?;
        if !self.memory_mib.is_multiple_of(VM_MEMORY_STEP_MIB) {
            return Err(TopologyError::MemoryNotMultiple {
                vm: vm(),
                memory_mib: self.memory_mib,
            });
        }
        if !(MIN_VM_RAM / MIB..=MAX_VM_RAM / MIB).contains(&self.memory_mib) {
            return Err(TopologyError::MemoryOutOfRange {
                vm: vm(),
                memory_mib: self.memory_mib,
            });
        }
        if !(1..=MAX_VCPUS_PER_VM).contains(&self.vcpus) {
            return Err(TopologyError::Vcpus {
                vm: vm(),
                vcpus: self.vcpus,
            });
        }
        if self.image.is_empty() {
            return Err(TopologyError::EmptyImage { vm: vm() });
        }
        for (key, value) in &self.settings {
            let key_ok = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !key_ok {
                return Err(TopologyError::SettingKey {
                    vm: vm(),
                    key: key.clone(),
                });
            }
            // A line break would let a value inject further key=value lines.
            if value.contains(['\n', '\r']) {
                return Err(TopologyError::SettingValue {
                    vm: vm(),
                    key: key.clone(),
                });
            }
        }
        let len = self.settings_text().len();
        if len > MAX_SETTINGS_LEN {
            return Err(TopologyError::SettingsTooLong { vm: vm(), len });
        }
        self.validate_balloon()
    }

    /// The balloon's target settings, by shared-abi's own parsers (the bundle parser checks the
    /// schedule again; the control commands are the driver domain's to run).
    fn validate_balloon(&self) -> Result<(), TopologyError> {
        let refused = |key, problem: String| TopologyError::Balloon {
            vm: self.name.clone(),
            key,
            problem,
        };
        if let Some(text) = self.setting(balloon::SCHEDULE_KEY) {
            balloon::parse_schedule(text)
                .map_err(|e| refused(balloon::SCHEDULE_KEY, e.to_string()))?;
        }
        if let Some(text) = self.setting(balloon::CONTROL_KEY) {
            if self.kind != VmKind::DriverDomain {
                return Err(refused(
                    balloon::CONTROL_KEY,
                    "only a driver domain may set other VMs' targets".into(),
                ));
            }
            balloon::parse_control(text)
                .map_err(|e| refused(balloon::CONTROL_KEY, e.to_string()))?;
        }
        Ok(())
    }

    /// An emulated NIC needs a device model: the guest's back-end. The guest's `nic` setting is
    /// the packer's to write.
    fn validate_nic(&self) -> Result<(), TopologyError> {
        let problem = |problem: &str| {
            Err(TopologyError::GuestNic {
                vm: self.name.clone(),
                problem: problem.into(),
            })
        };
        if self.setting(GuestNic::SETTING).is_some() {
            return problem(
                "setting nic is reserved: give the VM field nic = \"emulated\" or \"paravirt\" \
                 instead (outside [vm.settings])",
            );
        }
        if self.nic == GuestNic::Emulated && self.backend.is_none() {
            return problem(
                "nic = \"emulated\" needs a backend = \"<driver domain>\": the device model runs \
                 there",
            );
        }
        Ok(())
    }

    /// Checks `backend` against the other VMs, in the order that gives the most useful message:
    /// a driver domain with any backend is wrong whatever it names.
    fn validate_backend(&self, vms: &[VmDef]) -> Result<(), TopologyError> {
        let Some(backend) = &self.backend else {
            return Ok(());
        };
        let vm = || self.name.clone();
        if self.kind == VmKind::DriverDomain {
            return Err(TopologyError::BackendOnDriverDomain {
                vm: vm(),
                backend: backend.clone(),
            });
        }
        if *backend == self.name {
            return Err(TopologyError::BackendIsSelf { vm: vm() });
        }
        match vms.iter().find(|other| other.name == *backend) {
            None => Err(TopologyError::UnknownBackend {
                vm: vm(),
                backend: backend.clone(),
            }),
            Some(other) if other.kind != VmKind::DriverDomain => {
                Err(TopologyError::BackendNotDriverDomain {
                    vm: vm(),
                    backend: backend.clone(),
                })
            }
            Some(_) => Ok(()),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum PackError {
    MissingImage {
        vm: String,
        image: String,
    },
    /// Only for a [`Topology`] built by hand: files are validated, which catches this earlier.
    UnknownBackend {
        vm: String,
        backend: String,
    },
    Bundle(BundleError),
    /// Only for a [`Topology`] built by hand: files are validated, which catches this earlier
    /// (the front-ends' identities, see [`TopologyError::Identities`]).
    Identities(String),
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackError::MissingImage { vm, image } => write!(
                f,
                "vm {vm:?} uses image {image:?}, but no file was given for it; pass \
                 --image {image}=PATH"
            ),
            PackError::UnknownBackend { vm, backend } => write!(
                f,
                "vm {vm:?}: backend = {backend:?} is not the name of any VM in this topology"
            ),
            PackError::Bundle(e) => write!(f, "cannot build the bundle: {e}"),
            PackError::Identities(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for PackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PackError::Bundle(e) => Some(e),
            PackError::MissingImage { .. }
            | PackError::UnknownBackend { .. }
            | PackError::Identities(_) => None,
        }
    }
}

/// Builds the boot bundle for `topology`, taking each VM's image by name from `images`. VMs get
/// ids 1, 2, ... in topology order, and each `backend` name becomes that VM's id.
pub fn pack(topology: &Topology, images: &HashMap<String, Vec<u8>>) -> Result<Vec<u8>, PackError> {
    let id_of = |name: &str| {
        let index = topology.vms.iter().position(|vm| vm.name == name)?;
        // More VMs than ids is refused by the bundle builder (TooManyVms) before ids matter.
        Some(u16::try_from(index + 1).unwrap_or(u16::MAX))
    };
    let vms = topology
        .vms
        .iter()
        .map(|vm| {
            let image = images
                .get(&vm.image)
                .ok_or_else(|| PackError::MissingImage {
                    vm: vm.name.clone(),
                    image: vm.image.clone(),
                })?;
            let backend = match &vm.backend {
                None => None,
                Some(name) => Some(id_of(name).ok_or_else(|| PackError::UnknownBackend {
                    vm: vm.name.clone(),
                    backend: name.clone(),
                })?),
            };
            Ok(VmDescription {
                name: vm.name.clone(),
                kind: vm.kind,
                vcpus: vm.vcpus,
                // Validated to at most MAX_VM_RAM / MIB, so no overflow.
                ram_bytes: vm.memory_mib * MIB,
                image: image.clone(),
                settings: topology
                    .packed_settings(vm)
                    .map_err(|e| PackError::Identities(e.to_string()))?,
                backend,
                passthrough: vm.passthrough,
                emulated_nic: vm.nic == GuestNic::Emulated,
            })
        })
        .collect::<Result<Vec<_>, PackError>>()?;
    builder::build(&vms).map_err(PackError::Bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_abi::bundle::Bundle;

    fn default_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/default.toml")
    }

    const MINIMAL: &str = r#"
[machine]
cpus = 2
memory_mib = 256

[[vm]]
name = "a"
kind = "guest"
image = "img"
memory_mib = 8
vcpus = 1
"#;

    /// MINIMAL with `from` replaced by `to`, parsed; the replacement must apply.
    fn with(from: &str, to: &str) -> Result<Topology, TopologyError> {
        assert!(MINIMAL.contains(from), "{from:?} not in MINIMAL");
        Topology::from_toml_str(&MINIMAL.replacen(from, to, 1))
    }

    fn err(from: &str, to: &str) -> TopologyError {
        with(from, to).expect_err("must be rejected")
    }

    fn vm_table(name: &str, memory_mib: u64) -> String {
        format!(
            "[[vm]]\nname = \"{name}\"\nkind = \"guest\"\nimage = \"img\"\n\
             memory_mib = {memory_mib}\nvcpus = 1\n"
        )
    }

    /// A driver domain table with an optional extra line (e.g. a backend).
    fn dd_table(name: &str, extra: &str) -> String {
        format!(
            "[[vm]]\nname = \"{name}\"\nkind = \"driver-domain\"\nimage = \"dd\"\n\
             memory_mib = 8\nvcpus = 1\n{extra}"
        )
    }

    /// MINIMAL (guest "a") with `backend_line` added to "a", followed by `more` VM tables.
    fn with_backend(backend_line: &str, more: &str) -> Result<Topology, TopologyError> {
        let text = MINIMAL.replacen("vcpus = 1\n", &format!("vcpus = 1\n{backend_line}\n"), 1);
        Topology::from_toml_str(&format!("{text}{more}"))
    }

    #[test]
    fn default_topology_parses() {
        let t = Topology::from_file(&default_path()).unwrap();
        assert_eq!(
            t.machine,
            Machine {
                cpus: 2,
                memory_mib: 1024,
                nic: Some(NicBackend::User),
                // The NIC's MSI-X as vLPIs (issue 15).
                gic: 4,
                profile_hz: None,
            }
        );
        assert_eq!(t.vms[0].passthrough, Bdf::new(0, 2, 0));
        assert!(t.vms[1..].iter().all(|vm| vm.passthrough.is_none()));
        assert_eq!(
            t.passthrough().map(|(vm, _)| vm.name.as_str()),
            Some("driver-domain")
        );
        let summary: Vec<_> = t
            .vms
            .iter()
            .map(|vm| {
                (
                    vm.name.as_str(),
                    vm.kind,
                    vm.image.as_str(),
                    vm.memory_mib,
                    vm.vcpus,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "driver-domain",
                    VmKind::DriverDomain,
                    "driver-domain",
                    16,
                    1
                ),
                ("guest1", VmKind::Guest, "guest-frontend", 144, 1),
                ("guest2", VmKind::Guest, "guest-frontend", 8, 1),
                ("guest3", VmKind::Guest, "guest-frontend", 8, 1),
            ]
        );
        let nics: Vec<_> = t.vms.iter().map(|vm| vm.nic).collect();
        assert_eq!(
            nics,
            [
                GuestNic::Paravirt,
                GuestNic::Paravirt,
                GuestNic::Paravirt,
                GuestNic::Emulated
            ]
        );
        assert_eq!(
            t.vms[0].settings_text(),
            "role=switch\nip=10.0.2.15/24\nnic_serve_ms=6000\n"
        );
        assert_eq!(t.vms[0].backend, None);
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            t.vms[1].settings,
            [
                pair("app", "net"),
                pair("ip", "10.0.2.16/24"),
                pair("ping", "10.0.2.17,10.0.2.18,10.0.2.2"),
                pair("ping_late_ms", "10000"),
                pair("host_echo", "true"),
                pair("balloon_schedule", "0:16"),
            ]
        );
        assert_eq!(
            t.vms[2].settings,
            [
                pair("app", "net"),
                pair("ip", "10.0.2.17/24"),
                pair("ping", "10.0.2.16,10.0.2.2"),
                pair("balloon_schedule", "0:136"),
            ]
        );
        let ips: Vec<_> = t
            .vms
            .iter()
            .map(|vm| vm.ip().unwrap().to_string())
            .collect();
        assert_eq!(
            t.vms[3].settings,
            [
                pair("app", "net"),
                pair("ip", "10.0.2.18/24"),
                pair("ping", "10.0.2.16,10.0.2.2"),
            ]
        );
        assert_eq!(ips, ["10.0.2.15", "10.0.2.16", "10.0.2.17", "10.0.2.18"]);
        for guest in &t.vms[1..] {
            assert_eq!(guest.backend.as_deref(), Some("driver-domain"));
        }
    }

    #[test]
    fn backend_is_optional_and_parsed() {
        assert_eq!(
            Topology::from_toml_str(MINIMAL).unwrap().vms[0].backend,
            None
        );
        let t = with_backend("backend = \"dd\"", &dd_table("dd", "")).unwrap();
        assert_eq!(t.vms[0].backend.as_deref(), Some("dd"));
        assert_eq!(t.vms[1].backend, None);
        // Several guests may share one driver domain, which may come after them in the file.
        let more = vm_table("b", 8) + "backend = \"dd\"\n" + &dd_table("dd", "");
        let t = with_backend("backend = \"dd\"", &more).unwrap();
        assert_eq!(t.vms[0].backend.as_deref(), Some("dd"));
        assert_eq!(t.vms[1].backend.as_deref(), Some("dd"));
    }

    #[test]
    fn rejects_mistyped_backend() {
        let e = with_backend("backend = 1", &dd_table("dd", "")).unwrap_err();
        assert!(matches!(e, TopologyError::Syntax(_)), "{e}");
        let e = with_backend("backends = \"dd\"", &dd_table("dd", "")).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn rejects_unknown_backend() {
        let e = with_backend("backend = \"nope\"", &dd_table("dd", "")).unwrap_err();
        assert!(
            matches!(&e, TopologyError::UnknownBackend { vm, backend } if vm == "a" && backend == "nope"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "vm \"a\": backend = \"nope\" is not the name of any VM in this topology"
        );
    }

    #[test]
    fn rejects_backend_that_is_a_guest() {
        let e = with_backend("backend = \"b\"", &vm_table("b", 8)).unwrap_err();
        assert!(
            matches!(&e, TopologyError::BackendNotDriverDomain { vm, backend } if vm == "a" && backend == "b"),
            "{e}"
        );
        assert!(e.to_string().contains("\"driver-domain\""), "{e}");
    }

    #[test]
    fn rejects_backend_on_a_driver_domain() {
        // Naming another driver domain, a guest, or itself: all refused the same way.
        for target in ["dd2", "a", "dd"] {
            let more = dd_table("dd", &format!("backend = \"{target}\"\n")) + &dd_table("dd2", "");
            let e = Topology::from_toml_str(&format!("{MINIMAL}{more}")).unwrap_err();
            assert!(
                matches!(&e, TopologyError::BackendOnDriverDomain { vm, backend } if vm == "dd" && backend == target),
                "{target}: {e}"
            );
            assert!(e.to_string().contains("remove the field"), "{e}");
        }
    }

    #[test]
    fn rejects_backend_naming_itself() {
        let e = with_backend("backend = \"a\"", &dd_table("dd", "")).unwrap_err();
        assert!(
            matches!(&e, TopologyError::BackendIsSelf { vm } if vm == "a"),
            "{e}"
        );
        assert!(e.to_string().contains("names the VM itself"), "{e}");
    }

    const NIC: Bdf = match Bdf::new(0, 2, 0) {
        Some(bdf) => bdf,
        None => panic!(),
    };

    /// MINIMAL (guest "a") plus driver domain "dd" with `dd_extra` lines, `machine_extra` added
    /// to [machine].
    fn with_dd(machine_extra: &str, dd_extra: &str) -> Result<Topology, TopologyError> {
        let text = MINIMAL.replacen(
            "memory_mib = 256\n",
            &format!("memory_mib = 256\n{machine_extra}"),
            1,
        );
        Topology::from_toml_str(&format!("{text}{}", dd_table("dd", dd_extra)))
    }

    /// A driver domain "dd" (VM 1) and guests connected to it, each with `settings`.
    fn dd_with_guests(dd_settings: &str, guests: &[&str]) -> Result<Topology, TopologyError> {
        let mut text = format!(
            "[machine]\ncpus = 2\nmemory_mib = 512\n{}",
            dd_table("dd", &format!("settings = {{ {dd_settings} }}\n"))
        );
        for (i, settings) in guests.iter().enumerate() {
            text += &format!(
                "[[vm]]\nname = \"g{i}\"\nkind = \"guest\"\nimage = \"img\"\nmemory_mib = 8\n\
                 vcpus = 1\nbackend = \"dd\"\nsettings = {{ {settings} }}\n"
            );
        }
        Topology::from_toml_str(&text)
    }

    #[test]
    fn driver_domains_learn_their_front_ends_identities() {
        let t = dd_with_guests(
            "role = \"switch\"",
            &[
                "ip = \"10.0.2.16/24\"",
                "ip = \"10.0.2.17\", mac = \"02:aa:bb:cc:dd:ee\"",
                // Settings the guest refuses itself: the default MAC, no address.
                "ip = \"bogus\", mac = \"01:00:5e:00:00:01\"",
                "app = \"pingpong\"",
            ],
        )
        .unwrap();
        assert_eq!(
            t.packed_settings(&t.vms[0]).unwrap(),
            "role=switch\nfrontends=2=02:51:55:00:00:02/10.0.2.16,3=02:aa:bb:cc:dd:ee/10.0.2.17,\
             4=02:51:55:00:00:04,5=02:51:55:00:00:05\n"
        );
        // Guests get only their own settings.
        assert_eq!(t.packed_settings(&t.vms[1]).unwrap(), "ip=10.0.2.16/24\n");
        // A driver domain without front-ends gets nothing added.
        let alone = dd_with_guests("role = \"switch\"", &[]).unwrap();
        assert_eq!(
            alone.packed_settings(&alone.vms[0]).unwrap(),
            "role=switch\n"
        );
    }

    #[test]
    fn front_ends_may_not_share_an_identity() {
        let clash = |guests: &[&str]| match dd_with_guests("role = \"switch\"", guests) {
            Err(TopologyError::Identities { vm, problem }) => {
                assert_eq!(vm, "dd");
                problem
            }
            other => panic!("{guests:?}: expected an identity clash, got {other:?}"),
        };
        assert!(clash(&["ip = \"10.0.2.16/24\"", "ip = \"10.0.2.16/24\""]).contains("vm 3"));
        // Guest 3 takes guest 2's default MAC.
        let p = clash(&[
            "ip = \"10.0.2.16/24\"",
            "ip = \"10.0.2.17/24\", mac = \"02:51:55:00:00:02\"",
        ]);
        assert!(p.contains("vm 3"), "{p}");
        // The packer's key is not the user's to set.
        let e = dd_with_guests(
            "frontends = \"2=02:00:00:00:00:09\"",
            &["ip = \"10.0.2.16\""],
        )
        .unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
    }

    /// A driver domain "dd" and guests connected to it, each with its own extra VM lines.
    fn dd_with_guest_lines(guests: &[&str]) -> Result<Topology, TopologyError> {
        let mut text = format!(
            "[machine]\ncpus = 2\nmemory_mib = 512\n{}",
            dd_table("dd", "")
        );
        for (i, lines) in guests.iter().enumerate() {
            text += &format!(
                "[[vm]]\nname = \"g{i}\"\nkind = \"guest\"\nimage = \"img\"\nmemory_mib = 8\n\
                 vcpus = 1\n{lines}\n"
            );
        }
        Topology::from_toml_str(&text)
    }

    #[test]
    fn an_emulated_nic_is_packed_into_the_bundle_the_guest_and_its_driver_domain() {
        let t = dd_with_guest_lines(&[
            "backend = \"dd\"\nnic = \"emulated\"\nsettings = { ip = \"10.0.2.16/24\" }",
            "backend = \"dd\"\nnic = \"paravirt\"\nsettings = { ip = \"10.0.2.17/24\" }",
            "backend = \"dd\"\nsettings = { ip = \"10.0.2.18/24\" }",
        ])
        .unwrap();
        let nics: Vec<_> = t.vms.iter().map(|vm| vm.nic).collect();
        use GuestNic::{Emulated, Paravirt};
        assert_eq!(nics, [Paravirt, Emulated, Paravirt, Paravirt]);
        assert_eq!(
            t.packed_settings(&t.vms[0]).unwrap(),
            "frontends=2=02:51:55:00:00:02/10.0.2.16+emulated,3=02:51:55:00:00:03/10.0.2.17,\
             4=02:51:55:00:00:04/10.0.2.18\n"
        );
        assert_eq!(
            t.packed_settings(&t.vms[1]).unwrap(),
            "ip=10.0.2.16/24\nnic=emulated\n"
        );
        assert_eq!(t.packed_settings(&t.vms[2]).unwrap(), "ip=10.0.2.17/24\n");
        let images = HashMap::from([
            ("img".to_owned(), vec![1; 100]),
            ("dd".to_owned(), vec![2; 100]),
        ]);
        let bytes = pack(&t, &images).unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        let flags: Vec<_> = bundle.vms().map(|vm| vm.emulated_nic).collect();
        assert_eq!(flags, [false, true, false, false]);
        // What the driver domain reads back marks exactly the emulated guest.
        let value =
            shared_abi::start_info::setting(bundle.vm(0).unwrap().settings, identity::SETTING)
                .unwrap();
        let emulated: Vec<_> = identity::entries(value)
            .map(|e| e.unwrap())
            .filter(|e| e.emulated)
            .map(|e| e.vm)
            .collect();
        assert_eq!(emulated, [2]);
    }

    #[test]
    fn rejects_a_bad_or_misplaced_nic() {
        let problem = |guests: &[&str]| match dd_with_guest_lines(guests) {
            Err(TopologyError::GuestNic { vm, problem }) => format!("{vm}: {problem}"),
            other => panic!("{guests:?}: expected a nic error, got {other:?}"),
        };
        let p = problem(&["backend = \"dd\"\nnic = \"e1000\""]);
        assert_eq!(p, "g0: nic = \"e1000\" is not \"emulated\" or \"paravirt\"");
        // No backend, no device model.
        let p = problem(&["nic = \"emulated\""]);
        assert!(
            p.starts_with("g0: nic = \"emulated\" needs a backend"),
            "{p}"
        );
        // The setting is the packer's.
        let p = problem(&["backend = \"dd\"\nsettings = { nic = \"emulated\" }"]);
        assert!(p.contains("setting nic is reserved"), "{p}");
        // A driver domain cannot have one.
        let e = Topology::from_toml_str(&format!(
            "[machine]\ncpus = 2\nmemory_mib = 512\n{}",
            dd_table("dd", "nic = \"emulated\"\n")
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("vm \"dd\": nic = \"emulated\" is for guests"),
            "{e}"
        );
        // A paravirt guest without a backend is fine (it simply has no network).
        assert!(dd_with_guest_lines(&["nic = \"paravirt\""]).is_ok());
        // A hand-built topology skips validation; the bundle's own rule still applies.
        let mut t = dd_with_guest_lines(&[""]).unwrap();
        t.vms[1].nic = GuestNic::Emulated;
        let images = HashMap::from([
            ("img".to_owned(), vec![1; 100]),
            ("dd".to_owned(), vec![2; 100]),
        ]);
        assert_eq!(
            pack(&t, &images).unwrap_err(),
            PackError::Bundle(BundleError::EmulatedNicWithoutBackend { vm: 1 })
        );
    }

    #[test]
    fn passthrough_is_parsed_and_the_nic_defaults_to_user() {
        let t = with_dd("", "passthrough = \"00:02.0\"\n").unwrap();
        assert_eq!(t.vms[1].passthrough, Some(NIC));
        assert_eq!(t.vms[0].passthrough, None);
        assert_eq!(t.machine.nic, Some(NicBackend::User));
        let (vm, bdf) = t.passthrough().unwrap();
        assert_eq!((vm.name.as_str(), bdf), ("dd", NIC));
        // Explicit "user", the long form with a domain, the last slot and function.
        let t = with_dd("nic = \"user\"\n", "passthrough = \"0000:00:1f.7\"\n").unwrap();
        assert_eq!(t.machine.nic, Some(NicBackend::User));
        assert_eq!(t.vms[1].passthrough, Bdf::new(0, 0x1f, 7));
        // No passthrough: no NIC.
        let t = with_dd("", "").unwrap();
        assert_eq!(t.machine.nic, None);
        assert!(t.passthrough().is_none());
    }

    #[test]
    fn default_topology_passes_the_nic_to_the_driver_domain() {
        let text = std::fs::read_to_string(default_path()).unwrap();
        let t = Topology::from_toml_str(&text).unwrap();
        assert_eq!(t.machine.nic, Some(NicBackend::User));
        let (vm, bdf) = t.passthrough().unwrap();
        assert_eq!((vm.name.as_str(), bdf), ("driver-domain", NIC));
    }

    #[test]
    fn sixteen_guests_topology_fits_and_pings_everyone() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/sixteen-guests.toml");
        let t = Topology::from_file(&path).unwrap();
        assert_eq!(t.machine.cpus, 2);
        assert_eq!(t.vms.len(), 17);
        assert!(t.vms.len() <= MAX_VMS);
        let (dd, _) = t.passthrough().unwrap();
        assert_eq!(dd.name, "driver-domain");
        let guests = &t.vms[1..];
        let ips: Vec<Ipv4Addr> = guests.iter().map(|vm| vm.ip().unwrap()).collect();
        for (i, guest) in guests.iter().enumerate() {
            assert_eq!(guest.name, format!("guest{}", i + 1));
            assert_eq!((guest.vcpus, guest.memory_mib), (1, 8));
            assert_eq!(guest.backend.as_deref(), Some("driver-domain"));
            assert_eq!(guest.setting("app"), Some("net"));
            assert_eq!(ips[i], Ipv4Addr::new(10, 0, 2, 16 + i as u8));
            let targets: Vec<Ipv4Addr> = guest
                .setting("ping")
                .unwrap()
                .split(',')
                .map(|t| t.parse().unwrap())
                .collect();
            // Every other guest once, starting with the next one.
            let others: Vec<Ipv4Addr> = ips.iter().copied().filter(|&ip| ip != ips[i]).collect();
            let next = ips[(i + 1) % ips.len()];
            assert_eq!(targets[0], next, "{}", guest.name);
            let mut sorted = targets.clone();
            sorted.sort();
            assert_eq!(sorted, others, "{}", guest.name);
        }
    }

    #[test]
    fn settings_ip_and_gateway_accessors() {
        let t = with(
            "vcpus = 1\n",
            "vcpus = 1\nsettings = { ip = \"10.0.2.16/24\", gateway = \"10.0.2.1\" }\n",
        )
        .unwrap();
        let vm = &t.vms[0];
        assert_eq!(vm.setting("ip"), Some("10.0.2.16/24"));
        assert_eq!(vm.setting("nope"), None);
        assert_eq!(vm.ip(), Ok(Ipv4Addr::new(10, 0, 2, 16)));
        assert_eq!(vm.gateway(), Ok(Ipv4Addr::new(10, 0, 2, 1)));
        // Defaults: a guest has no address, a driver domain 10.0.2.15; the gateway is the host.
        let t = with_dd("", "").unwrap();
        assert!(t.vms[0].ip().unwrap_err().contains("has no ip setting"));
        assert_eq!(t.vms[1].ip(), Ok(crate::hostnet::DRIVER_DOMAIN_IP));
        assert_eq!(t.vms[0].gateway(), Ok(Ipv4Addr::new(10, 0, 2, 2)));
        // Without a prefix length is fine; malformed values say what is wrong.
        let t = with(
            "vcpus = 1\n",
            "vcpus = 1\nsettings = { ip = \"10.0.2.9\" }\n",
        )
        .unwrap();
        assert_eq!(t.vms[0].ip(), Ok(Ipv4Addr::new(10, 0, 2, 9)));
        for bad in ["10.0.2/24", "10.0.2.16/33", "10.0.2.16/", "x"] {
            let t = with(
                "vcpus = 1\n",
                &format!("vcpus = 1\nsettings = {{ ip = \"{bad}\", gateway = \"{bad}\" }}\n"),
            )
            .unwrap();
            assert!(
                t.vms[0]
                    .ip()
                    .unwrap_err()
                    .contains("is not an IPv4 address"),
                "{bad}"
            );
            assert!(t.vms[0]
                .gateway()
                .unwrap_err()
                .contains("is not an IPv4 address"));
        }
    }

    #[test]
    fn nic_backend_spelling() {
        for backend in [NicBackend::User, NicBackend::Tap, NicBackend::Passt] {
            assert_eq!(NicBackend::parse(backend.as_str()), Ok(backend.clone()));
        }
        assert_eq!(NicBackend::User.as_str(), "user");
        assert_eq!(NicBackend::Tap.as_str(), "tap");
        assert_eq!(NicBackend::Passt.as_str(), "passt");
        for other in ["User", "TAP", "", "none", "tap0", " tap", "pasta", "PASST"] {
            let e = NicBackend::parse(other).unwrap_err();
            assert!(e.starts_with("must be \"user\" "), "{other}: {e}");
        }
        let e = NicBackend::parse("tap:tap0").unwrap_err();
        assert!(e.contains("nic = \"tap\" makes its own"), "{e}");
    }

    #[test]
    fn gic_is_3_by_default_4_on_request_and_nothing_else() {
        assert_eq!(with_dd("", "").unwrap().machine.gic, 3);
        assert_eq!(with_dd("gic = 4\n", "").unwrap().machine.gic, 4);
        assert_eq!(with_dd("gic = 3\n", "").unwrap().machine.gic, 3);
        for bad in [0, 2, 5] {
            let e = with_dd(&format!("gic = {bad}\n"), "").unwrap_err();
            assert!(matches!(e, TopologyError::Gic { gic } if gic == bad), "{e}");
        }
        assert!(with_dd("gic = \"4\"\n", "").is_err());
    }

    #[test]
    fn profile_hz_is_off_by_default_and_bounded() {
        assert_eq!(with_dd("", "").unwrap().machine.profile_hz, None);
        assert_eq!(
            with_dd("profile_hz = 1000\n", "")
                .unwrap()
                .machine
                .profile_hz,
            Some(1000)
        );
        for bad in [0u64, 99, 10_001, 1 << 40] {
            let e = with_dd(&format!("profile_hz = {bad}\n"), "").unwrap_err();
            assert!(matches!(e, TopologyError::ProfileHz(_)), "{e}");
            assert_eq!(
                e.to_string(),
                format!(
                    "machine.profile_hz = {bad} is outside 100..=10000 samples per second per pCPU"
                )
            );
        }
        assert!(with_dd("profile_hz = -5\n", "").is_err());
        assert!(with_dd("profile_hz = \"fast\"\n", "").is_err());
    }

    #[test]
    fn tap_is_parsed_and_needs_a_passthrough() {
        let t = with_dd("nic = \"tap\"\n", "passthrough = \"00:02.0\"\n").unwrap();
        assert_eq!(t.machine.nic, Some(NicBackend::Tap));
        assert_eq!(t.passthrough().map(|(vm, _)| vm.name.as_str()), Some("dd"));
        // Parsing needs no privileges; only booting it does.
        let e = with_dd("nic = \"tap\"\n", "").unwrap_err();
        assert!(
            matches!(&e, TopologyError::NicWithoutPassthrough { nic } if nic == "tap"),
            "{e}"
        );
        // The default topology with the tap option.
        let text = std::fs::read_to_string(default_path()).unwrap();
        assert!(text.contains("\nnic = \"user\""));
        let t =
            Topology::from_toml_str(&text.replacen("nic = \"user\"", "nic = \"tap\"", 1)).unwrap();
        assert_eq!(t.machine.nic, Some(NicBackend::Tap));
    }

    #[test]
    fn rejects_unknown_nic_backends() {
        for value in ["tap:tap0", "socket", ""] {
            let e = with_dd(
                &format!("nic = \"{value}\"\n"),
                "passthrough = \"00:02.0\"\n",
            )
            .unwrap_err();
            assert!(
                matches!(&e, TopologyError::Nic { value: v, .. } if v == value),
                "{e}"
            );
            assert_eq!(
                e.to_string(),
                format!(
                    "machine.nic = {value:?}: {}",
                    NicBackend::parse(value).unwrap_err()
                )
            );
        }
        let e = with_dd("nic = 1\n", "passthrough = \"00:02.0\"\n").unwrap_err();
        assert!(matches!(e, TopologyError::Syntax(_)), "{e}");
    }

    #[test]
    fn rejects_nic_without_passthrough() {
        let e = with_dd("nic = \"user\"\n", "").unwrap_err();
        assert!(
            matches!(&e, TopologyError::NicWithoutPassthrough { nic } if nic == "user"),
            "{e}"
        );
        assert!(e.to_string().contains("no VM has a passthrough"), "{e}");
    }

    #[test]
    fn rejects_malformed_passthrough() {
        for (value, problem) in [
            (
                "00:2g.0",
                BdfError::NotHex(shared_abi::pci::BdfField::Device),
            ),
            (
                "00:02.8",
                BdfError::OutOfRange(shared_abi::pci::BdfField::Function),
            ),
            (
                "00:20.0",
                BdfError::OutOfRange(shared_abi::pci::BdfField::Device),
            ),
            ("0002.0", BdfError::Format),
            ("", BdfError::Empty),
        ] {
            let e = with_dd("", &format!("passthrough = \"{value}\"\n")).unwrap_err();
            assert!(
                matches!(&e, TopologyError::PassthroughSyntax { vm, value: v, problem: p }
                    if vm == "dd" && v == value && *p == problem),
                "{value}: {e}"
            );
            assert!(
                e.to_string()
                    .starts_with(&format!("vm \"dd\": passthrough = {value:?}: ")),
                "{e}"
            );
        }
        let e = with_dd("", "passthrough = 2\n").unwrap_err();
        assert!(matches!(e, TopologyError::Syntax(_)), "{e}");
        let e = with_dd("", "pass_through = \"00:02.0\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn rejects_passthrough_on_a_guest() {
        let e = with_backend("passthrough = \"00:02.0\"", "").unwrap_err();
        assert!(
            matches!(&e, TopologyError::PassthroughOnGuest { vm, bdf } if vm == "a" && *bdf == NIC),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("vm \"a\": passthrough = \"00:02.0\" on a guest"),
            "{e}"
        );
    }

    #[test]
    fn rejects_the_host_bridge_slot() {
        for value in ["00:00.0", "00:00.3"] {
            let e = with_dd("", &format!("passthrough = \"{value}\"\n")).unwrap_err();
            assert!(
                matches!(&e, TopologyError::PassthroughHostBridge { vm, bdf }
                    if vm == "dd" && bdf.to_string() == value),
                "{e}"
            );
            assert!(e.to_string().contains("host bridge"), "{e}");
        }
        with_dd("", "passthrough = \"00:01.0\"\n").unwrap();
    }

    #[test]
    fn rejects_passthrough_off_the_root_bus() {
        let e = with_dd("", "passthrough = \"01:02.0\"\n").unwrap_err();
        assert!(
            matches!(&e, TopologyError::PassthroughNotRootBus { vm, bdf }
                if vm == "dd" && *bdf == Bdf::new(1, 2, 0).unwrap()),
            "{e}"
        );
        assert!(e.to_string().contains("the bus must be 00"), "{e}");
    }

    #[test]
    fn one_passthrough_per_machine() {
        let two = |first: &str, second: &str| {
            let text = format!(
                "{MINIMAL}{}{}",
                dd_table("dd1", &format!("passthrough = \"{first}\"\n")),
                dd_table("dd2", &format!("passthrough = \"{second}\"\n"))
            );
            Topology::from_toml_str(&text).unwrap_err()
        };
        let e = two("00:02.0", "0:2.0");
        assert!(
            matches!(&e, TopologyError::DuplicatePassthrough { first, second, bdf }
                if first == "dd1" && second == "dd2" && *bdf == NIC),
            "{e}"
        );
        assert!(e.to_string().contains("already given to vm \"dd1\""), "{e}");
        let e = two("00:02.0", "00:03.0");
        assert!(
            matches!(&e, TopologyError::TooManyPassthroughs { first, second }
                if first == "dd1" && second == "dd2"),
            "{e}"
        );
        assert!(e.to_string().contains("single NIC"), "{e}");
        // Two driver domains, one with the NIC, are fine.
        let text = format!(
            "{MINIMAL}{}{}",
            dd_table("dd1", ""),
            dd_table("dd2", "passthrough = \"00:03.0\"\n")
        );
        let t = Topology::from_toml_str(&text).unwrap();
        assert_eq!(t.passthrough().map(|(vm, _)| vm.name.as_str()), Some("dd2"));
    }

    #[test]
    fn pack_carries_the_passthrough_into_the_bundle() {
        let text = format!("{MINIMAL}{}", dd_table("dd", "passthrough = \"00:02.0\"\n")).replacen(
            "vcpus = 1\n",
            "vcpus = 1\nbackend = \"dd\"\n",
            1,
        );
        let t = Topology::from_toml_str(&text).unwrap();
        let images = HashMap::from([
            ("img".to_owned(), vec![1; 100]),
            ("dd".to_owned(), vec![2; 100]),
        ]);
        let bytes = pack(&t, &images).unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        let owned: Vec<_> = bundle.vms().map(|vm| vm.passthrough).collect();
        assert_eq!(owned, [None, Some(NIC)]);
        // A hand-built topology skips validation; the bundle's own rules still apply.
        let mut t = t;
        t.vms[0].passthrough = Some(Bdf::new(0, 3, 0).unwrap());
        assert_eq!(
            pack(&t, &images).unwrap_err(),
            PackError::Bundle(BundleError::PassthroughNotDriverDomain {
                vm: 0,
                bdf: Bdf::new(0, 3, 0).unwrap()
            })
        );
    }

    #[test]
    fn minimal_topology_has_no_settings() {
        let t = Topology::from_toml_str(MINIMAL).unwrap();
        assert!(t.vms[0].settings.is_empty());
        assert_eq!(t.vms[0].settings_text(), "");
    }

    #[test]
    fn settings_keep_file_order_and_render_all_value_types() {
        let t = with(
            "vcpus = 1\n",
            "vcpus = 1\n[vm.settings]\nzeta = \"z\"\nalpha = 7\nneg = -3\nflag = true\nurl = \"a=b\"\n",
        )
        .unwrap();
        assert_eq!(
            t.vms[0].settings_text(),
            "zeta=z\nalpha=7\nneg=-3\nflag=true\nurl=a=b\n"
        );
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let e = Topology::from_file(Path::new("/nonexistent/topology.toml")).unwrap_err();
        assert!(matches!(e, TopologyError::Io { .. }));
        assert!(e.to_string().contains("/nonexistent/topology.toml"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn syntax_errors_are_reported() {
        let e = Topology::from_toml_str("[machine\ncpus = 2").unwrap_err();
        assert!(matches!(e, TopologyError::Syntax(_)));
        assert!(e.to_string().starts_with("invalid topology:"), "{e}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        for (from, to) in [
            ("vcpus = 1", "vcpu = 1"),
            ("cpus = 2", "cpus = 2\ncores = 2"),
            ("[machine]", "[machin]"),
        ] {
            let e = err(from, to);
            assert!(matches!(e, TopologyError::Syntax(_)), "{from} -> {to}: {e}");
            assert!(e.to_string().contains("unknown field"), "{e}");
        }
    }

    #[test]
    fn missing_and_mistyped_fields_are_rejected() {
        assert!(matches!(err("vcpus = 1\n", ""), TopologyError::Syntax(_)));
        assert!(matches!(
            err("memory_mib = 8", "memory_mib = \"8\""),
            TopologyError::Syntax(_)
        ));
        assert!(matches!(
            err("memory_mib = 8", "memory_mib = -8"),
            TopologyError::Syntax(_)
        ));
        let e = err("kind = \"guest\"", "kind = \"driver\"");
        assert!(e.to_string().contains("driver-domain"), "{e}");
        let e = err("vcpus = 1\n", "vcpus = 1\nsettings = { x = 1.5 }\n");
        assert!(
            e.to_string().contains("a string, integer or boolean"),
            "{e}"
        );
        let e = err("vcpus = 1\n", "vcpus = 1\nsettings = { x = [1] }\n");
        assert!(matches!(e, TopologyError::Syntax(_)));
        let e = err("vcpus = 1\n", "vcpus = 1\nsettings = 3\n");
        assert!(
            e.to_string().contains("a table of key = value settings"),
            "{e}"
        );
    }

    #[test]
    fn rejects_machine_cpus_out_of_range() {
        assert!(matches!(
            err("cpus = 2", "cpus = 0"),
            TopologyError::MachineCpus { cpus: 0 }
        ));
        let e = err("cpus = 2", "cpus = 9");
        assert!(matches!(e, TopologyError::MachineCpus { cpus: 9 }));
        assert!(e.to_string().contains("machine.cpus = 9"), "{e}");
        with("cpus = 2", "cpus = 8").unwrap();
    }

    #[test]
    fn rejects_no_vms() {
        let e = Topology::from_toml_str("[machine]\ncpus = 1\nmemory_mib = 512\n").unwrap_err();
        assert!(matches!(e, TopologyError::NoVms));
    }

    #[test]
    fn rejects_too_many_vms() {
        let mut text = "[machine]\ncpus = 1\nmemory_mib = 4096\n".to_owned();
        for i in 0..=MAX_VMS {
            text += &vm_table(&format!("vm{i}"), 2);
        }
        let e = Topology::from_toml_str(&text).unwrap_err();
        assert!(matches!(e, TopologyError::TooManyVms { count } if count == MAX_VMS + 1));
    }

    #[test]
    fn rejects_bad_names() {
        for (name, expected) in [
            ("", NameProblem::Empty),
            ("this-name-is-far-too-long-for-sluice", NameProblem::TooLong),
            ("Guest1", NameProblem::InvalidChar),
            ("guest_1", NameProblem::InvalidChar),
        ] {
            let e = err("name = \"a\"", &format!("name = \"{name}\""));
            assert!(
                matches!(&e, TopologyError::Name { index: 0, problem, .. } if *problem == expected),
                "{name}: {e}"
            );
            assert!(e.to_string().contains("[[vm]] number 1"), "{e}");
        }
    }

    #[test]
    fn rejects_duplicate_names() {
        let text = format!("{MINIMAL}{}", vm_table("a", 8));
        let e = Topology::from_toml_str(&text).unwrap_err();
        assert!(matches!(&e, TopologyError::DuplicateName { name } if name == "a"));
        assert!(e.to_string().contains("\"a\""), "{e}");
    }

    #[test]
    fn rejects_odd_memory() {
        let e = err("memory_mib = 8", "memory_mib = 7");
        assert!(matches!(
            e,
            TopologyError::MemoryNotMultiple { memory_mib: 7, .. }
        ));
        assert!(e.to_string().contains("vm \"a\": memory_mib = 7"), "{e}");
    }

    #[test]
    fn rejects_memory_out_of_range() {
        for mib in [0, 1026, u64::MAX - 1] {
            let e = err("memory_mib = 8", &format!("memory_mib = {mib}"));
            assert!(
                matches!(e, TopologyError::MemoryOutOfRange { memory_mib, .. } if memory_mib == mib),
                "{e}"
            );
        }
        with("memory_mib = 8", "memory_mib = 2").unwrap();
    }

    #[test]
    fn rejects_vcpus_out_of_range() {
        for vcpus in [0, MAX_VCPUS_PER_VM + 1] {
            let e = err("vcpus = 1", &format!("vcpus = {vcpus}"));
            assert!(
                matches!(e, TopologyError::Vcpus { vcpus: v, .. } if v == vcpus),
                "{e}"
            );
        }
    }

    #[test]
    fn rejects_empty_image_name() {
        let e = err("image = \"img\"", "image = \"\"");
        assert!(matches!(e, TopologyError::EmptyImage { .. }));
    }

    #[test]
    fn rejects_bad_balloon_schedules_and_control_on_a_guest() {
        for (value, says) in [
            ("\"\"", "empty"),
            ("\"1000\"", "not ms:MiB"),
            ("\"1000:2\"", "outside 4..=1024 MiB"),
            ("\"1000:2048\"", "outside 4..=1024 MiB"),
            ("\"3600001:16\"", "one hour"),
            ("\"9:16,8:32\"", "does not come after"),
        ] {
            let e = err(
                "vcpus = 1\n",
                &format!("vcpus = 1\nsettings = {{ balloon_schedule = {value} }}\n"),
            );
            assert!(
                matches!(
                    &e,
                    TopologyError::Balloon {
                        key: "balloon_schedule",
                        ..
                    }
                ) && e.to_string().contains(says),
                "{value}: {e}"
            );
        }
        let e = err(
            "vcpus = 1\n",
            "vcpus = 1\nsettings = { balloon_control = \"1:2:16\" }\n",
        );
        assert!(e.to_string().contains("only a driver domain"), "{e}");
        let ok = with(
            "vcpus = 1\n",
            "vcpus = 1\nsettings = { balloon_schedule = \"1000:4,2000:8\" }\n",
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn rejects_bad_setting_keys() {
        for key in ["\"Bad\"", "\"a-b\"", "\"\"", "\"a b\"", "\"x=y\""] {
            let e = err(
                "vcpus = 1\n",
                &format!("vcpus = 1\nsettings = {{ {key} = 1 }}\n"),
            );
            assert!(matches!(e, TopologyError::SettingKey { .. }), "{key}: {e}");
        }
    }

    #[test]
    fn rejects_setting_values_with_line_breaks() {
        for value in ["\"a\\nb\"", "\"a\\rb\"", "\"\"\"\nx\ny\"\"\""] {
            let e = err(
                "vcpus = 1\n",
                &format!("vcpus = 1\n[vm.settings]\nk = {value}\n"),
            );
            assert!(
                matches!(&e, TopologyError::SettingValue { key, .. } if key == "k"),
                "{e}"
            );
        }
    }

    #[test]
    fn rejects_settings_too_long() {
        let long = "x".repeat(MAX_SETTINGS_LEN);
        let e = err(
            "vcpus = 1\n",
            &format!("vcpus = 1\nsettings = {{ k = \"{long}\" }}\n"),
        );
        assert!(
            matches!(e, TopologyError::SettingsTooLong { len, .. } if len == MAX_SETTINGS_LEN + 3)
        );
        // Exactly at the limit: "k=" + value + "\n".
        let fits = "x".repeat(MAX_SETTINGS_LEN - 3);
        with(
            "vcpus = 1\n",
            &format!("vcpus = 1\nsettings = {{ k = \"{fits}\" }}\n"),
        )
        .unwrap();
    }

    /// The bundle's settings limit counts the line the packer adds: settings that fit alone but
    /// not with an emulated guest's `nic=emulated` or a driver domain's `frontends` line are
    /// refused here, naming the VM, instead of later by the packer as a bundle error.
    #[test]
    fn rejects_settings_the_packer_pushes_past_the_limit() {
        // One setting "k=...\n" that leaves `room` bytes of the limit free.
        let filling = |room: usize| format!("k = \"{}\"", "x".repeat(MAX_SETTINGS_LEN - 3 - room));
        let images = HashMap::from([
            ("img".to_owned(), vec![1; 100]),
            ("dd".to_owned(), vec![2; 100]),
        ]);
        let emulated_guest = |room| {
            dd_with_guest_lines(&[&format!(
                "backend = \"dd\"\nnic = \"emulated\"\nsettings = {{ {} }}",
                filling(room)
            )])
        };
        let nic_line = "nic=emulated\n".len();
        let e = emulated_guest(nic_line - 1).unwrap_err();
        assert!(
            matches!(&e, TopologyError::PackedSettingsTooLong { vm, own: 2036, line: "nic", len: 2049 }
                if vm == "g0"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "vm \"g0\": settings come to 2036 bytes as key=value lines, 2049 with the nic line \
             the packer adds; at most 2048 are allowed, shorten the settings"
        );
        pack(&emulated_guest(nic_line).unwrap(), &images).unwrap();

        let frontends_line = "frontends=2=02:51:55:00:00:02\n".len();
        let driver_domain = |room| dd_with_guests(&filling(room), &[""]);
        let e = driver_domain(frontends_line - 1).unwrap_err();
        assert!(
            matches!(&e, TopologyError::PackedSettingsTooLong { vm, line: "frontends", len: 2049, .. }
                if vm == "dd"),
            "{e:?}"
        );
        pack(&driver_domain(frontends_line).unwrap(), &images).unwrap();
    }

    /// Four driver domains' grant-mapping budgets (5 MiB of hypervisor heap each) are more than
    /// the 18 MiB set aside: refused here with what to do, as the hypervisor would refuse the
    /// bundle; three fit.
    #[test]
    fn rejects_more_driver_domains_than_the_mapping_heap_allows() {
        let domains = |n: usize| {
            let mut text = String::from("[machine]\ncpus = 2\nmemory_mib = 512\n");
            for i in 0..n {
                text += &dd_table(&format!("dd{i}"), "");
            }
            Topology::from_toml_str(&text)
        };
        let images = HashMap::from([("dd".to_owned(), vec![2; 100])]);
        let three = domains(3).unwrap();
        let bundle = pack(&three, &images).unwrap();
        Bundle::parse(&bundle).unwrap();
        let e = domains(4).unwrap_err();
        assert!(
            matches!(
                e,
                TopologyError::MappingBudgets {
                    driver_domains: 4,
                    guests: 0,
                    needed_kib: 20_480
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "4 driver domain(s) and 0 guest(s) could need 20480 KiB of hypervisor heap for their \
             grant mappings, more than the 18432 KiB set aside for them (each driver domain 5120 \
             KiB, each guest 160 KiB); use fewer driver domains"
        );
    }

    #[test]
    fn rejects_memory_overcommit() {
        // 256 MiB machine leaves 192 MiB; the VM alone asks for 194.
        let e = err("memory_mib = 8", "memory_mib = 194");
        assert!(matches!(
            e,
            TopologyError::OutOfMemory {
                total_mib: 194,
                machine_mib: 256
            }
        ));
        assert!(e.to_string().contains("only 192 MiB"), "{e}");
        with("memory_mib = 8", "memory_mib = 192").unwrap();
        // Less machine memory than the reservation itself.
        let e = err("memory_mib = 256", "memory_mib = 32");
        assert!(e.to_string().contains("only 0 MiB"), "{e}");
    }

    #[test]
    fn errors_have_distinct_messages() {
        let vm = || "v".to_owned();
        let errors = [
            TopologyError::MachineCpus { cpus: 0 },
            TopologyError::NoVms,
            TopologyError::TooManyVms { count: 17 },
            TopologyError::Name {
                index: 0,
                name: "X".into(),
                problem: NameProblem::InvalidChar,
            },
            TopologyError::DuplicateName { name: vm() },
            TopologyError::MemoryNotMultiple {
                vm: vm(),
                memory_mib: 3,
            },
            TopologyError::MemoryOutOfRange {
                vm: vm(),
                memory_mib: 0,
            },
            TopologyError::Vcpus { vm: vm(), vcpus: 0 },
            TopologyError::EmptyImage { vm: vm() },
            TopologyError::SettingKey {
                vm: vm(),
                key: "K".into(),
            },
            TopologyError::SettingValue {
                vm: vm(),
                key: "k".into(),
            },
            TopologyError::SettingsTooLong {
                vm: vm(),
                len: 9999,
            },
            TopologyError::MappingBudgets {
                driver_domains: 4,
                guests: 1,
                needed_kib: 20_640,
            },
            TopologyError::PackedSettingsTooLong {
                vm: vm(),
                own: 2040,
                line: "nic",
                len: 2053,
            },
            TopologyError::Balloon {
                vm: vm(),
                key: "balloon_schedule",
                problem: "p".into(),
            },
            TopologyError::OutOfMemory {
                total_mib: 1,
                machine_mib: 2,
            },
            TopologyError::UnknownBackend {
                vm: vm(),
                backend: "b".into(),
            },
            TopologyError::BackendNotDriverDomain {
                vm: vm(),
                backend: "b".into(),
            },
            TopologyError::BackendOnDriverDomain {
                vm: vm(),
                backend: "b".into(),
            },
            TopologyError::BackendIsSelf { vm: vm() },
            TopologyError::PassthroughSyntax {
                vm: vm(),
                value: "x".into(),
                problem: BdfError::Format,
            },
            TopologyError::PassthroughOnGuest { vm: vm(), bdf: NIC },
            TopologyError::PassthroughHostBridge {
                vm: vm(),
                bdf: Bdf::HOST_BRIDGE,
            },
            TopologyError::PassthroughNotRootBus { vm: vm(), bdf: NIC },
            TopologyError::DuplicatePassthrough {
                first: vm(),
                second: "w".into(),
                bdf: NIC,
            },
            TopologyError::TooManyPassthroughs {
                first: vm(),
                second: "w".into(),
            },
            TopologyError::Nic {
                value: "tap:x".into(),
                problem: "p".into(),
            },
            TopologyError::NicWithoutPassthrough { nic: "user".into() },
            TopologyError::Gic { gic: 2 },
            TopologyError::Identities {
                vm: vm(),
                problem: "p".into(),
            },
        ];
        let messages: HashSet<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), errors.len());
    }

    fn default_images() -> HashMap<String, Vec<u8>> {
        HashMap::from([
            ("driver-domain".to_owned(), vec![0xd0; 4000]),
            ("guest-frontend".to_owned(), vec![0x6f; 2500]),
        ])
    }

    #[test]
    fn pack_round_trips_through_the_bundle_parser() {
        let t = Topology::from_file(&default_path()).unwrap();
        let images = default_images();
        let bytes = pack(&t, &images).unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        assert_eq!(bundle.vm_count(), t.vms.len());
        for (spec, def) in bundle.vms().zip(&t.vms) {
            assert_eq!(spec.name, def.name);
            assert_eq!(spec.kind, def.kind);
            assert_eq!(spec.vcpus, def.vcpus);
            assert_eq!(spec.ram_bytes, def.memory_mib * MIB);
            assert_eq!(spec.settings, t.packed_settings(def).unwrap());
            assert_eq!(spec.image, images[&def.image].as_slice());
        }
        // Every guest names the driver domain, VM id 1, and the peers follow.
        assert_eq!(bundle.vm(0).unwrap().backend, None);
        for guest in bundle.vms().skip(1) {
            assert_eq!(guest.backend, Some(1));
            assert_eq!(bundle.peers_of(guest.id), 1 << 1);
        }
        assert_eq!(bundle.peers_of(1), (1 << 2) | (1 << 3) | (1 << 4));
        assert_eq!(
            bundle.vm(0).unwrap().settings,
            "role=switch\nip=10.0.2.15/24\nnic_serve_ms=6000\n\
             frontends=2=02:51:55:00:00:02/10.0.2.16,3=02:51:55:00:00:03/10.0.2.17,\
             4=02:51:55:00:00:04/10.0.2.18+emulated\n"
        );
        let emulated: Vec<_> = bundle.vms().map(|vm| vm.emulated_nic).collect();
        assert_eq!(emulated, [false, false, false, true]);
        assert_eq!(bundle.vm(0).unwrap().passthrough, Bdf::new(0, 2, 0));
        assert_eq!(
            shared_abi::start_info::setting(bundle.vm(2).unwrap().settings, "ip"),
            Some("10.0.2.17/24")
        );
        // The guests share one copy of their image.
        assert!(bytes.len() < 4000 + 2 * 2500);
    }

    #[test]
    fn pack_names_a_missing_image() {
        let t = Topology::from_file(&default_path()).unwrap();
        let mut images = default_images();
        images.remove("guest-frontend");
        let e = pack(&t, &images).unwrap_err();
        assert_eq!(
            e,
            PackError::MissingImage {
                vm: "guest1".into(),
                image: "guest-frontend".into()
            }
        );
        assert!(e.to_string().contains("--image guest-frontend=PATH"), "{e}");
    }

    #[test]
    fn pack_uses_file_order_ids_for_backends() {
        // The driver domain comes last, so its id is 3.
        let text = format!(
            "{MINIMAL}{}{}",
            vm_table("b", 8) + "backend = \"dd\"\n",
            dd_table("dd", "")
        );
        let t = Topology::from_toml_str(&text).unwrap();
        let images = HashMap::from([
            ("img".to_owned(), vec![1; 100]),
            ("dd".to_owned(), vec![2; 100]),
        ]);
        let bytes = pack(&t, &images).unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        let backends: Vec<_> = bundle.vms().map(|vm| vm.backend).collect();
        assert_eq!(backends, [None, Some(3), None]);
        assert_eq!(bundle.peers_of(3), 1 << 2);
    }

    #[test]
    fn pack_refuses_an_unvalidated_unknown_backend() {
        let mut t = Topology::from_toml_str(MINIMAL).unwrap();
        t.vms[0].backend = Some("ghost".into());
        let images = HashMap::from([("img".to_owned(), vec![1; 100])]);
        let e = pack(&t, &images).unwrap_err();
        assert_eq!(
            e,
            PackError::UnknownBackend {
                vm: "a".into(),
                backend: "ghost".into()
            }
        );
        assert!(e.to_string().contains("\"ghost\""), "{e}");
        // Names that exist but are wrong are caught by the bundle's own validation.
        let text = format!("{MINIMAL}{}", vm_table("b", 8));
        let mut t = Topology::from_toml_str(&text).unwrap();
        t.vms[0].backend = Some("b".into());
        assert_eq!(
            pack(&t, &images).unwrap_err(),
            PackError::Bundle(BundleError::BackendNotDriverDomain { vm: 0, backend: 2 })
        );
    }

    #[test]
    fn pack_reports_bundle_errors() {
        let t =
            Topology::from_toml_str(&MINIMAL.replace("memory_mib = 8", "memory_mib = 2")).unwrap();
        // An image that leaves no room for the start-info page in 2 MiB.
        let images = HashMap::from([("img".to_owned(), vec![0; 2 * MIB as usize])]);
        let e = pack(&t, &images).unwrap_err();
        assert!(
            matches!(
                e,
                PackError::Bundle(BundleError::ImageTooLarge { vm: 0, .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("start-info"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }
}

#[cfg(test)]
mod property_tests;
