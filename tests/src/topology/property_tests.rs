//! Property tests for the house rule on topology files: any text gets `Ok` or a clear `Err`,
//! never a panic, and whatever is accepted packs into a bundle that the hypervisor's parser
//! ([`Bundle::parse`](shared_abi::bundle::Bundle::parse)) accepts and reads back unchanged.

use super::*;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use shared_abi::bundle::Bundle;

/// `text` as a TOML string literal, escaped the way TOML wants.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// One small image per image name, distinct per name: without the header of
/// `shared_abi::image` and small enough for the smallest VM, so the bundle's verdict is
/// about the topology alone.
fn images_for(topology: &Topology) -> HashMap<String, Vec<u8>> {
    let mut images = HashMap::new();
    for vm in &topology.vms {
        let fill = u8::try_from(images.len() + 1).unwrap_or(u8::MAX);
        images
            .entry(vm.image.clone())
            .or_insert_with(|| vec![fill; 64]);
    }
    images
}

/// Packs an accepted topology and reads the bundle back with the hypervisor's parser: the
/// same VMs in file order, with the names, kinds, sizes, settings and connections the file
/// gave them.
fn check_round_trip(topology: &Topology) -> Result<(), TestCaseError> {
    let images = images_for(topology);
    let bytes = pack(topology, &images)
        .map_err(|e| TestCaseError::fail(format!("accepted, but pack refuses it: {e}")))?;
    let bundle = Bundle::parse(&bytes)
        .map_err(|e| TestCaseError::fail(format!("packed, but Bundle::parse refuses it: {e}")))?;
    prop_assert_eq!(bundle.vm_count(), topology.vms.len());
    for (index, (spec, def)) in bundle.vms().zip(&topology.vms).enumerate() {
        prop_assert_eq!(usize::from(spec.id), index + 1);
        prop_assert_eq!(spec.name, def.name.as_str());
        prop_assert_eq!(spec.kind, def.kind);
        prop_assert_eq!(spec.vcpus, def.vcpus);
        prop_assert_eq!(spec.ram_bytes, def.memory_mib * MIB);
        prop_assert_eq!(spec.image, images[&def.image].as_slice());
        let packed = topology
            .packed_settings(def)
            .map_err(|e| TestCaseError::fail(format!("accepted, but {e}")))?;
        prop_assert_eq!(spec.settings, packed.as_str());
        let backend_id = def.backend.as_ref().map(|name| {
            let index = topology.vms.iter().position(|vm| vm.name == *name);
            index.map_or(0, |i| i + 1)
        });
        prop_assert_eq!(spec.backend.map(usize::from), backend_id);
        prop_assert_eq!(spec.passthrough, def.passthrough);
        prop_assert_eq!(spec.emulated_nic, def.nic == GuestNic::Emulated);
    }
    Ok(())
}

/// The beginnings of every refusal: each says where the problem is (the TOML position, the
/// machine field, the VM) before what it is.
const REFUSAL_OPENINGS: [&str; 6] = [
    "invalid topology: ",
    "machine.",
    "vm \"",
    "[[vm]] number ",
    "the topology has ",
    "VMs need ",
];

/// Parses `text`: an accepted topology must round-trip through the bundle, a refused one
/// must say where the problem is.
fn check_any_outcome(text: &str) -> Result<(), TestCaseError> {
    match Topology::from_toml_str(text) {
        Ok(topology) => check_round_trip(&topology),
        Err(e) => {
            let message = e.to_string();
            prop_assert!(
                REFUSAL_OPENINGS.iter().any(|o| message.starts_with(o)),
                "{:?}: {}",
                e,
                message
            );
            Ok(())
        }
    }
}

/// TOML values of every type, around and far past each limit, and some TOML itself refuses
/// (an integer past i64, a bare word, an unterminated string).
fn any_toml_value() -> BoxedStrategy<String> {
    prop_oneof![
        select(
            &[
                "0",
                "1",
                "2",
                "3",
                "4",
                "8",
                "9",
                "31",
                "32",
                "33",
                "255",
                "256",
                "1024",
                "1026",
                "2048",
                "10000",
                "10001",
                "-1",
                "-2",
                "-9223372036854775808",
                "9223372036854775807",
                "18446744073709551616",
                "0x7fff_ffff",
                "1e3",
                "1.5",
                "-0.0",
                "inf",
                "nan",
                "true",
                "false",
                "1979-05-27T07:32:00Z",
                "[]",
                "[1, \"a\", [true]]",
                "{}",
                "{ a = 1 }",
                "\"\"",
                "''",
                "\"unterminated",
                "bare",
            ][..]
        )
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| format!("{x:?}")),
        "\\PC{0,40}".prop_map(|s| quoted(&s)),
        any::<String>().prop_map(|s| quoted(&s)),
        (0usize..5000).prop_map(|n| quoted(&"x".repeat(n))),
    ]
    .boxed()
}

/// `plausible` nearly always, else any value at all: one stray value in a file is enough
/// for a refusal, and most files should get past TOML's types to the topology's checks.
fn mostly(plausible: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![20 => plausible, 1 => any_toml_value()].boxed()
}

/// One of `good` usually, one of `odd` (values the topology refuses) now and then.
fn usually(good: &'static [&'static str], odd: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![8 => select(good).prop_map(quoted), 1 => select(odd).prop_map(quoted)].boxed()
}

fn number_in(range: std::ops::RangeInclusive<u64>) -> BoxedStrategy<String> {
    range.prop_map(|n| n.to_string()).boxed()
}

/// VM names from a small pool, so duplicate names and backends naming a VM are common.
const NAMES: &[&str] = &[
    "a",
    "b",
    "dd",
    "dd2",
    "guest-1",
    "abcdefghijklmnopqrstuvwxyz01234",
];
/// Names the rules refuse: upper case, '_', non-ASCII, empty, 32 bytes.
const BAD_NAMES: &[&str] = &["Guest", "g_1", "é", "", "abcdefghijklmnopqrstuvwxyz012345"];

fn machine_value(key: &'static str) -> BoxedStrategy<String> {
    mostly(match key {
        "cpus" => prop_oneof![8 => number_in(1..=8), 1 => number_in(0..=10)].boxed(),
        "memory_mib" => prop_oneof![
            8 => number_in(64..=4096),
            1 => number_in(0..=u64::MAX >> 1),
        ]
        .boxed(),
        "nic" => usually(&["user", "tap", "passt"], &["tap:eth0", "slirp", ""]),
        "gic" => prop_oneof![8 => number_in(3..=4), 1 => number_in(0..=300)].boxed(),
        "profile_hz" => prop_oneof![
            8 => number_in(100..=10_000),
            1 => number_in(0..=20_000),
        ]
        .boxed(),
        _ => any_toml_value(),
    })
}

/// A `settings` value: mostly an inline table of plausible and implausible settings.
fn settings_value() -> BoxedStrategy<String> {
    let entry = |key: &'static str| {
        let value = match key {
            "ip" => prop_oneof![
                8 => (0u8..=20).prop_map(|n| quoted(&format!("10.0.2.{n}/24"))),
                1 => Just(quoted("bogus")),
            ]
            .boxed(),
            "mac" => prop_oneof![
                8 => (0u8..=9).prop_map(|n| quoted(&format!("02:00:00:00:00:0{n}"))),
                1 => Just(quoted("01:00:5e:00:00:01")),
            ]
            .boxed(),
            "balloon_schedule" => usually(&["0:16", "1000:4,2000:8"], &["", "9:16,8:32", "0:2"]),
            "balloon_control" => usually(&["1:2:16"], &["bad"]),
            _ => mostly(
                prop_oneof![
                    number_in(0..=100_000),
                    "[a-z0-9.,:/ ]{0,20}".prop_map(|s| quoted(&s)),
                ]
                .boxed(),
            ),
        };
        value.prop_map(move |value| format!("{key} = {value}"))
    };
    let good = &[
        "app",
        "ip",
        "mac",
        "role",
        "k",
        "balloon_schedule",
        "balloon_control",
    ];
    // Keys the topology refuses or reserves, and one a good key may repeat.
    let odd = &["nic", "frontends", "Bad", "a-b", "\"\"", "\"x=y\"", "ip"];
    let keys = (
        prop::sample::subsequence(&good[..], 0..=4),
        prop::option::weighted(0.1, select(&odd[..])),
    )
        .prop_map(|(keys, odd)| keys.into_iter().chain(odd).collect::<Vec<_>>());
    let table = keys
        .prop_flat_map(move |keys| keys.into_iter().map(entry).collect::<Vec<_>>())
        .prop_map(|entries| format!("{{ {} }}", entries.join(", ")));
    mostly(table.boxed())
}

fn vm_value(key: &'static str) -> BoxedStrategy<String> {
    match key {
        "name" | "backend" => mostly(usually(NAMES, BAD_NAMES)),
        "kind" => mostly(usually(
            &["guest", "driver-domain"],
            &["driver_domain", "Guest"],
        )),
        "image" => mostly(usually(&["img", "dd"], &[""])),
        "memory_mib" => mostly(
            prop_oneof![
                8 => (1u64..=16).prop_map(|n| (n * 2).to_string()),
                1 => number_in(0..=1100),
            ]
            .boxed(),
        ),
        "vcpus" => mostly(prop_oneof![8 => number_in(1..=8), 1 => number_in(0..=10)].boxed()),
        "passthrough" => mostly(usually(
            &["00:02.0", "00:03.0", "00:1f.7"],
            &["00:00.0", "01:02.0", "00:20.0", "0:2.0", "zz"],
        )),
        "nic" => mostly(usually(&["emulated", "paravirt"], &["e1000"])),
        "settings" => settings_value(),
        _ => any_toml_value(),
    }
}

/// `key = value` lines: each required key nearly always there, then some of the optional
/// ones, and now and then a key the topology does not know or one given twice.
fn table_lines(
    required: &'static [&'static str],
    optional: &'static [&'static str],
    value: fn(&'static str) -> BoxedStrategy<String>,
) -> impl Strategy<Value = String> {
    let line = move |key: &'static str| value(key).prop_map(move |v| format!("{key} = {v}\n"));
    let required_lines: Vec<_> = required
        .iter()
        .map(|&key| prop::option::weighted(0.98, line(key)))
        .collect();
    let optional_lines = prop::sample::subsequence(optional, 0..=optional.len())
        .prop_flat_map(move |keys| keys.into_iter().map(line).collect::<Vec<_>>());
    let odd_key = prop_oneof![Just("colour"), select(required), select(optional)];
    let odd_line = prop::option::weighted(0.05, odd_key.prop_flat_map(line));
    (required_lines, optional_lines, odd_line).prop_map(|(required, optional, odd)| {
        required
            .into_iter()
            .flatten()
            .chain(optional)
            .chain(odd)
            .collect()
    })
}

fn machine_table() -> impl Strategy<Value = String> {
    table_lines(
        &["cpus", "memory_mib"],
        &["nic", "gic", "profile_hz"],
        machine_value,
    )
    .prop_map(|lines| format!("[machine]\n{lines}"))
}

fn vm_table() -> impl Strategy<Value = String> {
    table_lines(
        &["name", "kind", "image", "memory_mib", "vcpus"],
        &["settings", "backend", "passthrough", "nic"],
        vm_value,
    )
    .prop_map(|lines| format!("[[vm]]\n{lines}"))
}

/// A whole file: usually a machine table, a few VMs or many (up to past `MAX_VMS`), the
/// machine table before or after them, and now and then a stray top-level table.
fn topology_shaped_toml() -> impl Strategy<Value = String> {
    let vms = prop_oneof![
        4 => prop::collection::vec(vm_table(), 0..6),
        1 => prop::collection::vec(vm_table(), MAX_VMS - 2..MAX_VMS + 8),
    ];
    let stray = prop::option::weighted(0.05, Just("[extra]\nx = 1\n".to_owned()));
    (
        prop::option::weighted(0.95, machine_table()),
        vms,
        any::<bool>(),
        stray,
    )
        .prop_map(|(machine, vms, machine_last, stray)| {
            let machine = machine.unwrap_or_default();
            let vms = vms.concat();
            let stray = stray.unwrap_or_default();
            if machine_last {
                format!("{vms}{machine}{stray}")
            } else {
                format!("{machine}{vms}{stray}")
            }
        })
}

/// One VM of a topology that is valid by construction, apart from its settings' length.
#[derive(Clone, Debug)]
struct VmPlan {
    driver_domain: bool,
    memory_mib: u64,
    vcpus: u32,
    /// Which driver domain a guest connects to, if any (and if the topology has one).
    backend: Option<Index>,
    emulated: bool,
    explicit_mac: bool,
    balloon_schedule: Option<&'static str>,
    /// Bytes of a filler setting, sometimes enough to pass the settings limit.
    padding: usize,
}

prop_compose! {
    fn vm_plan()(
        driver_domain in prop::bool::weighted(0.25),
        memory_mib in prop_oneof![
            4 => (1u64..=32).prop_map(|n| n * 2),
            1 => (1u64..=512).prop_map(|n| n * 2)
        ],
        vcpus in 1..=MAX_VCPUS_PER_VM,
        backend in prop::option::weighted(0.8, any::<Index>()),
        emulated in any::<bool>(),
        explicit_mac in any::<bool>(),
        balloon_schedule in prop::option::of(select(&["0:16", "1000:4,2000:8", "0:4"][..])),
        padding in prop_oneof![40 => 0usize..100, 1 => 1900usize..=2100],
    ) -> VmPlan {
        VmPlan {
            driver_domain,
            memory_mib,
            vcpus,
            backend,
            emulated,
            explicit_mac,
            balloon_schedule,
            padding,
        }
    }
}

/// The machine: which optional fields it has, and how much memory it has to spare.
#[derive(Clone, Debug)]
struct MachinePlan {
    cpus: u32,
    spare_mib: u64,
    gic: u8,
    profile_hz: Option<u32>,
    passthrough: bool,
    nic: Option<&'static str>,
}

prop_compose! {
    fn machine_plan()(
        cpus in 1..=MAX_MACHINE_CPUS,
        spare_mib in 0u64..100,
        gic in select(&GIC_VERSIONS[..]),
        profile_hz in prop::option::of(select(&[100u32, 997, 10_000][..])),
        passthrough in any::<bool>(),
        nic in prop::option::of(select(&["user", "tap", "passt"][..])),
    ) -> MachinePlan {
        MachinePlan {
            cpus,
            spare_mib,
            gic,
            profile_hz,
            passthrough,
            nic,
        }
    }
}

/// The topology file for `machine` and `vms`: names `vm1`, `vm2`, ..., a backend only on
/// guests and only naming a driver domain, an emulated NIC only with a backend, at most one
/// passthrough (on the first driver domain), unique addresses and MACs, and enough machine
/// memory.
fn planned_toml(machine: &MachinePlan, vms: &[VmPlan]) -> String {
    let driver_domains: Vec<usize> = (0..vms.len()).filter(|&i| vms[i].driver_domain).collect();
    let passthrough_owner = driver_domains.first().filter(|_| machine.passthrough);
    let vm_mib: u64 = vms.iter().map(|vm| vm.memory_mib).sum();
    let mut text = format!(
        "[machine]\ncpus = {}\nmemory_mib = {}\ngic = {}\n",
        machine.cpus,
        HYPERVISOR_RESERVED_MIB + vm_mib + machine.spare_mib,
        machine.gic
    );
    if let Some(hz) = machine.profile_hz {
        text += &format!("profile_hz = {hz}\n");
    }
    if let (Some(nic), Some(_)) = (machine.nic, passthrough_owner) {
        text += &format!("nic = {}\n", quoted(nic));
    }
    for (i, vm) in vms.iter().enumerate() {
        let kind = if vm.driver_domain {
            "driver-domain"
        } else {
            "guest"
        };
        text += &format!(
            "[[vm]]\nname = \"vm{}\"\nkind = \"{kind}\"\nimage = \"{kind}\"\nmemory_mib = {}\n\
             vcpus = {}\n",
            i + 1,
            vm.memory_mib,
            vm.vcpus
        );
        let backend = vm
            .backend
            .filter(|_| !vm.driver_domain && !driver_domains.is_empty())
            .map(|pick| *pick.get(&driver_domains));
        if let Some(dd) = backend {
            text += &format!("backend = \"vm{}\"\n", dd + 1);
            if vm.emulated {
                text += "nic = \"emulated\"\n";
            }
        }
        if passthrough_owner == Some(&i) {
            text += "passthrough = \"00:02.0\"\n";
        }
        let mut settings = vec![("ip".to_owned(), format!("10.0.2.{}/24", 16 + i))];
        if vm.explicit_mac {
            settings.push(("mac".to_owned(), format!("02:00:00:00:01:{i:02x}")));
        }
        if let Some(schedule) = vm.balloon_schedule {
            settings.push((balloon::SCHEDULE_KEY.to_owned(), schedule.to_owned()));
        }
        settings.push(("pad".to_owned(), "x".repeat(vm.padding)));
        text += "[vm.settings]\n";
        for (key, value) in settings {
            text += &format!("{key} = {}\n", quoted(&value));
        }
    }
    text
}

/// The guest and driver domain for [`limits_agree_with_the_bundle`]'s two checks.
#[derive(Clone, Debug)]
struct PairPlan {
    guest_name: &'static str,
    memory_mib: u64,
    vcpus: u32,
    connected: bool,
    emulated: bool,
    /// Bytes of each VM's own settings as key=value lines, driver domain first.
    settings_len: [usize; 2],
}

fn pair_plan() -> impl Strategy<Value = PairPlan> {
    let settings_len = prop_oneof![Just(0usize), 1990usize..=MAX_SETTINGS_LEN + 10];
    (
        prop_oneof![8 => select(&["g", "guest-1"][..]), 1 => select(BAD_NAMES), 1 => Just("dd")],
        prop_oneof![8 => (1u64..=8).prop_map(|n| n * 2), 1 => 0u64..=1100],
        prop_oneof![8 => 1..=MAX_VCPUS_PER_VM, 1 => 0u32..=10, 1 => Just(65_537), 1 => Just(u32::MAX)],
        any::<bool>(),
        any::<bool>(),
        [settings_len.clone(), settings_len],
    )
        .prop_map(
            |(guest_name, memory_mib, vcpus, connected, emulated, settings_len)| PairPlan {
                guest_name,
                memory_mib,
                vcpus,
                connected,
                emulated,
                settings_len,
            },
        )
}

/// Settings that come to `len` bytes as key=value lines (one `k=xxx...` line, or none).
fn settings_of_len(len: usize) -> Vec<(String, String)> {
    match len.checked_sub("k=\n".len()) {
        Some(fill) if len > 0 => vec![("k".to_owned(), "x".repeat(fill))],
        _ => Vec::new(),
    }
}

/// The pair as hand-built, unvalidated VMs: driver domain "dd", then the guest.
fn pair_vms(plan: &PairPlan) -> Vec<VmDef> {
    let vm = |name: &str, kind, image: &str, settings_len| VmDef {
        name: name.to_owned(),
        kind,
        image: image.to_owned(),
        memory_mib: 8,
        vcpus: 1,
        settings: settings_of_len(settings_len),
        backend: None,
        passthrough: None,
        nic: GuestNic::Paravirt,
    };
    let dd = vm("dd", VmKind::DriverDomain, "dd", plan.settings_len[0]);
    let guest = VmDef {
        memory_mib: plan.memory_mib,
        vcpus: plan.vcpus,
        backend: plan.connected.then(|| "dd".to_owned()),
        nic: if plan.emulated {
            GuestNic::Emulated
        } else {
            GuestNic::Paravirt
        },
        ..vm(plan.guest_name, VmKind::Guest, "img", plan.settings_len[1])
    };
    vec![dd, guest]
}

/// The same VMs as a topology file.
fn pair_toml(vms: &[VmDef]) -> String {
    let mut text = "[machine]\ncpus = 2\nmemory_mib = 1048576\n".to_owned();
    for vm in vms {
        text += &format!(
            "[[vm]]\nname = {}\nkind = \"{}\"\nimage = \"{}\"\nmemory_mib = {}\nvcpus = {}\n\
             nic = \"{}\"\n",
            quoted(&vm.name),
            vm.kind.as_str(),
            vm.image,
            vm.memory_mib,
            vm.vcpus,
            vm.nic.name()
        );
        if let Some(backend) = &vm.backend {
            text += &format!("backend = {}\n", quoted(backend));
        }
        text += "[vm.settings]\n";
        for (key, value) in &vm.settings {
            text += &format!("{key} = {}\n", quoted(value));
        }
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any text at all, TOML or not, gets a topology or an error that says where the
    /// problem is; never a panic.
    #[test]
    fn arbitrary_text_is_accepted_or_refused_clearly(text in any::<String>()) {
        check_any_outcome(&text)?;
    }

    /// Text made of TOML's punctuation and the topology's words, which gets further into
    /// the parser than random characters do.
    #[test]
    fn toml_like_text_is_accepted_or_refused_clearly(
        text in "([\\[\\]{}=,.\"'# \n]|machine|vm|name|cpus|memory_mib|settings|[a-z0-9]){0,120}"
    ) {
        check_any_outcome(&text)?;
    }

    /// Topology-shaped files with wrong types, huge, negative and out-of-range numbers,
    /// empty and long strings, duplicate names, unknown keys and many VMs: each is refused
    /// clearly, or accepted and then packed into a bundle the hypervisor accepts.
    #[test]
    fn topology_shaped_toml_is_accepted_or_refused_clearly(text in topology_shaped_toml()) {
        check_any_outcome(&text)?;
    }

    /// Topologies valid by construction (any count of VMs, memory, vCPUs, connections,
    /// emulated NICs, a passthrough, machine options) are accepted and read back from the
    /// bundle unchanged; the only refusals allowed are settings padded past the limit and,
    /// exactly when the VMs' grant-mapping budgets exceed the heap set aside for them, those.
    #[test]
    fn valid_topologies_pack_into_bundles_the_hypervisor_reads_back(
        machine in machine_plan(),
        vms in prop::collection::vec(vm_plan(), 1..=MAX_VMS),
    ) {
        let text = planned_toml(&machine, &vms);
        let kinds = vms.iter().map(|vm| {
            if vm.driver_domain { VmKind::DriverDomain } else { VmKind::Guest }
        });
        let over_budget =
            shared_abi::bundle::mapping_heap_bytes(kinds) > shared_abi::grant::MAPPING_HEAP_BYTES;
        match Topology::from_toml_str(&text) {
            Ok(topology) => {
                prop_assert!(!over_budget, "accepted mapping budgets the hypervisor refuses");
                prop_assert_eq!(topology.vms.len(), vms.len());
                check_round_trip(&topology)?;
            }
            Err(
                TopologyError::SettingsTooLong { .. }
                | TopologyError::PackedSettingsTooLong { .. },
            ) => {}
            Err(TopologyError::MappingBudgets { .. }) => prop_assert!(over_budget),
            Err(e) => prop_assert!(false, "refused a valid topology: {}\n{}", e, text),
        }
    }

    /// Where the topology's per-VM limits and the bundle's cover the same thing (name,
    /// memory, vCPUs, settings length with what the packer adds, an emulated NIC's
    /// backend), they agree: the file is accepted exactly when packing the same VMs
    /// unchecked gives a bundle the hypervisor accepts. So neither a late boot failure nor
    /// a needless refusal.
    #[test]
    fn limits_agree_with_the_bundle(plan in pair_plan()) {
        let vms = pair_vms(&plan);
        let text = pair_toml(&vms);
        let topology = Topology::from_toml_str(&text);
        let unchecked = Topology {
            machine: Machine {
                cpus: 2,
                memory_mib: 1 << 20,
                nic: None,
                gic: 3,
                profile_hz: None,
            },
            vms,
        };
        let bundle = pack(&unchecked, &images_for(&unchecked));
        prop_assert_eq!(
            topology.is_ok(),
            bundle.is_ok(),
            "topology: {:?}\nbundle: {:?}",
            topology.map(|_| ()),
            bundle.map(|_| ())
        );
    }
}
