//! `sluice-pack`: command-line front end that turns a topology file and built VM images into a
//! boot bundle, or prints the topology's QEMU machine settings for `run.sh`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use shared_abi::bundle::Bundle;
use sluice_harness::topology::{pack, Topology};

const USAGE: &str = "usage:
  sluice-pack --topology FILE --image NAME=PATH [--image NAME=PATH ...] --out FILE
  sluice-pack --topology FILE --print-machine";

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Pack {
        topology: PathBuf,
        images: Vec<(String, PathBuf)>,
        out: PathBuf,
    },
    PrintMachine {
        topology: PathBuf,
    },
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut topology = None;
    let mut images: Vec<(String, PathBuf)> = Vec::new();
    let mut out = None;
    let mut print_machine = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--topology" => {
                if topology.replace(PathBuf::from(value(arg)?)).is_some() {
                    return Err("--topology given more than once".into());
                }
            }
            "--out" => {
                if out.replace(PathBuf::from(value(arg)?)).is_some() {
                    return Err("--out given more than once".into());
                }
            }
            "--image" => {
                let spec = value(arg)?;
                let Some((name, path)) = spec.split_once('=') else {
                    return Err(format!("--image {spec:?}: expected NAME=PATH"));
                };
                if name.is_empty() || path.is_empty() {
                    return Err(format!("--image {spec:?}: expected NAME=PATH"));
                }
                if images.iter().any(|(n, _)| n == name) {
                    return Err(format!("--image {name} given more than once"));
                }
                images.push((name.to_owned(), PathBuf::from(path)));
            }
            "--print-machine" => print_machine = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let topology = topology.ok_or("--topology FILE is required")?;
    if print_machine {
        if out.is_some() || !images.is_empty() {
            return Err("--print-machine takes no --image or --out".into());
        }
        return Ok(Command::PrintMachine { topology });
    }
    let out = out.ok_or("--out FILE is required (or use --print-machine)")?;
    Ok(Command::Pack {
        topology,
        images,
        out,
    })
}

fn load_topology(path: &Path) -> Result<Topology, String> {
    Topology::from_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs `command`, returning what to print on stdout.
fn run(command: Command) -> Result<String, String> {
    match command {
        Command::Help => Ok(format!("{USAGE}\n")),
        Command::PrintMachine { topology } => {
            let t = load_topology(&topology)?;
            Ok(format!(
                "cpus={} memory_mib={}\n",
                t.machine.cpus, t.machine.memory_mib
            ))
        }
        Command::Pack {
            topology,
            images,
            out,
        } => {
            let t = load_topology(&topology)?;
            let mut loaded = HashMap::new();
            for (name, path) in images {
                let bytes = std::fs::read(&path).map_err(|e| {
                    format!("cannot read image {name} from {}: {e}", path.display())
                })?;
                loaded.insert(name, bytes);
            }
            let bytes = pack(&t, &loaded).map_err(|e| format!("{}: {e}", topology.display()))?;
            // pack already parsed its output; parsing again here is cheap and gives the summary
            // exactly as the hypervisor will see it.
            let bundle = Bundle::parse(&bytes).map_err(|e| format!("internal error: {e}"))?;
            let mut summary = String::new();
            for (vm, def) in bundle.vms().zip(&t.vms) {
                summary += &format!(
                    "vm {} {}: kind={} vcpus={} memory_mib={} image={} ({} bytes) settings={:?}\n",
                    vm.id,
                    vm.name,
                    vm.kind.as_str(),
                    vm.vcpus,
                    vm.ram_bytes / (1024 * 1024),
                    def.image,
                    vm.image.len(),
                    vm.settings,
                );
            }
            std::fs::write(&out, &bytes)
                .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            summary += &format!("wrote {} ({} bytes)\n", out.display(), bytes.len());
            Ok(summary)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_args(&args)
        .map_err(|e| format!("{e}\n{USAGE}"))
        .and_then(run);
    match result {
        Ok(stdout) => {
            print!("{stdout}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("sluice-pack: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn default_topology() -> String {
        format!("{}/../topologies/default.toml", env!("CARGO_MANIFEST_DIR"))
    }

    /// A per-test scratch directory; the pid keeps parallel test runs apart.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-pack-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn parses_pack_command() {
        let cmd = parse_args(&args(&[
            "--topology",
            "t.toml",
            "--image",
            "a=x.bin",
            "--image",
            "b=y=z.bin",
            "--out",
            "o",
        ]))
        .unwrap();
        assert_eq!(
            cmd,
            Command::Pack {
                topology: "t.toml".into(),
                images: vec![("a".into(), "x.bin".into()), ("b".into(), "y=z.bin".into())],
                out: "o".into(),
            }
        );
    }

    #[test]
    fn parses_print_machine_and_help() {
        assert_eq!(
            parse_args(&args(&["--print-machine", "--topology", "t"])),
            Ok(Command::PrintMachine {
                topology: "t".into()
            })
        );
        assert_eq!(parse_args(&args(&["--help"])), Ok(Command::Help));
        assert!(run(Command::Help).unwrap().contains("--print-machine"));
    }

    #[test]
    fn rejects_bad_arguments() {
        for (list, needle) in [
            (&["--out", "o"][..], "--topology FILE is required"),
            (&["--topology", "t"], "--out FILE is required"),
            (&["--topology"], "--topology needs a value"),
            (&["--topology", "t", "--topology", "u"], "more than once"),
            (
                &["--topology", "t", "--out", "o", "--out", "p"],
                "more than once",
            ),
            (
                &["--topology", "t", "--image", "noequals"],
                "expected NAME=PATH",
            ),
            (&["--topology", "t", "--image", "=p"], "expected NAME=PATH"),
            (
                &["--topology", "t", "--image", "a=p", "--image", "a=q"],
                "more than once",
            ),
            (
                &["--topology", "t", "--print-machine", "--out", "o"],
                "takes no --image",
            ),
            (&["--topology", "t", "--verbose"], "unknown argument"),
        ] {
            let e = parse_args(&args(list)).unwrap_err();
            assert!(e.contains(needle), "{list:?}: {e}");
        }
    }

    #[test]
    fn prints_machine() {
        let out = run(Command::PrintMachine {
            topology: default_topology().into(),
        })
        .unwrap();
        assert_eq!(out, "cpus=2 memory_mib=1024\n");
    }

    #[test]
    fn packs_default_topology() {
        let dir = scratch("pack");
        std::fs::write(dir.join("dd.bin"), [1u8; 100]).unwrap();
        std::fs::write(dir.join("gf.bin"), [2u8; 50]).unwrap();
        let out = dir.join("bundle.bin");
        let summary = run(Command::Pack {
            topology: default_topology().into(),
            images: vec![
                ("driver-domain".into(), dir.join("dd.bin")),
                ("guest-frontend".into(), dir.join("gf.bin")),
            ],
            out: out.clone(),
        })
        .unwrap();
        assert_eq!(summary.lines().filter(|l| l.starts_with("vm ")).count(), 4);
        assert!(
            summary.contains("vm 3 guest2: kind=guest vcpus=1 memory_mib=8"),
            "{summary}"
        );
        let bytes = std::fs::read(&out).unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        assert_eq!(bundle.vm_count(), 4);
        // guest3 has the emulated NIC.
        assert!(bundle.vm(3).unwrap().emulated_nic);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reports_run_errors() {
        let dir = scratch("errors");
        let missing = run(Command::PrintMachine {
            topology: dir.join("nope.toml"),
        })
        .unwrap_err();
        assert!(missing.contains("nope.toml"), "{missing}");

        let pack_with = |images: Vec<(String, PathBuf)>, out: PathBuf| {
            run(Command::Pack {
                topology: default_topology().into(),
                images,
                out,
            })
            .unwrap_err()
        };
        let e = pack_with(
            vec![("driver-domain".into(), dir.join("absent.bin"))],
            dir.join("o"),
        );
        assert!(e.contains("cannot read image driver-domain"), "{e}");

        std::fs::write(dir.join("img.bin"), [1u8; 10]).unwrap();
        let e = pack_with(
            vec![("driver-domain".into(), dir.join("img.bin"))],
            dir.join("o"),
        );
        assert!(e.contains("--image guest-frontend=PATH"), "{e}");

        let both = vec![
            ("driver-domain".into(), dir.join("img.bin")),
            ("guest-frontend".into(), dir.join("img.bin")),
        ];
        let e = pack_with(both, dir.join("no-such-dir").join("o"));
        assert!(e.contains("cannot write"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
