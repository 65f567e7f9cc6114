#!/usr/bin/env bash
# sluice: one entry point for everything.
#   ./run.sh                    install what is missing, build, boot the demo topology, print a summary
#   ./run.sh test               every test: formatting, lints, host unit tests, QEMU integration tests
#   ./run.sh --topology FILE    boot another topology (see topologies/)
#   ./run.sh bench [--short] [--only GROUP,...]
#                               measure throughput (iperf3), latency, copy and sharing costs -> target/bench/,
#                               and a stock Debian Linux guest's host paths beside ours (group 'linux';
#                               scripts/linux-guest.sh fetches it once into ~/.cache/sluice/linux-guest)
#   ./run.sh profile [GROUP]    boot a bench group (default guest_to_guest) once with the hypervisor's
#                               guest-PC sampling on; print per VM where its time went
#   ./run.sh fuzz               2 x 1,000,000 fuzzed hypercalls beside a bystander pair (topologies/fuzz.toml)
#   ./run.sh setup | build      only install prerequisites / only build
set -euo pipefail
cd "$(dirname "$0")"

QEMU_MIN_MAJOR=8
QEMU_MIN_MINOR=2
TOOLCHAIN=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
VM_TARGET=aarch64-unknown-none
HV_TARGET=aarch64-unknown-none-softfloat
OUT=target/sluice

say() { printf '%s\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $* (install sudo or run as root)"; fi
}

qemu_ok() {
    command -v qemu-system-aarch64 >/dev/null || return 1
    local v major minor
    v=$(qemu-system-aarch64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    read -r major minor <<<"$v"
    [ -n "${major:-}" ] || return 1
    [ "$major" -gt "$QEMU_MIN_MAJOR" ] || { [ "$major" -eq "$QEMU_MIN_MAJOR" ] && [ "$minor" -ge "$QEMU_MIN_MINOR" ]; }
}

install_qemu() {
    qemu_ok && return 0
    say "Installing QEMU >= $QEMU_MIN_MAJOR.$QEMU_MIN_MINOR (qemu-system-arm) ..."
    command -v apt-get >/dev/null || die "no apt-get: install qemu-system-aarch64 >= $QEMU_MIN_MAJOR.$QEMU_MIN_MINOR yourself"
    . /etc/os-release
    local -a apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o=Dpkg::Use-Pty=0)
    if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
        # Debian 12 ships QEMU 7.2; SMMUv3 stage 2 needs 8.2+, which bookworm-backports has.
        if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            echo 'deb http://deb.debian.org/debian bookworm-backports main' |
                as_root tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
        fi
        as_root apt-get update -qq
        as_root "${apt[@]}" --no-install-recommends -t bookworm-backports install qemu-system-arm >/dev/null
    else
        as_root apt-get update -qq
        as_root "${apt[@]}" --no-install-recommends install qemu-system-arm >/dev/null
    fi
    qemu_ok || die "QEMU is still older than $QEMU_MIN_MAJOR.$QEMU_MIN_MINOR: install a newer qemu-system-arm"
}

install_rust() {
    command -v rustup >/dev/null || die "rustup not found: install it from https://rustup.rs, then run ./run.sh again"
    if ! rustup toolchain list | grep -q "^$TOOLCHAIN"; then
        say "Installing Rust $TOOLCHAIN ..."
        rustup toolchain install "$TOOLCHAIN" --profile minimal -c rustfmt -c clippy >/dev/null
    fi
    local installed
    installed=$(rustup target list --installed --toolchain "$TOOLCHAIN")
    for t in $VM_TARGET $HV_TARGET; do
        grep -qx "$t" <<<"$installed" || rustup target add --toolchain "$TOOLCHAIN" "$t" >/dev/null
    done
    local components
    components=$(rustup component list --installed --toolchain "$TOOLCHAIN")
    for c in rustfmt clippy; do
        grep -q "^$c" <<<"$components" || rustup component add --toolchain "$TOOLCHAIN" "$c" >/dev/null
    done
}

# Spin (the model checker for models/*.pml) and gcc (which compiles Spin's verifiers).
install_model_checker() {
    command -v spin >/dev/null && command -v gcc >/dev/null && return 0
    command -v apt-get >/dev/null || die "no apt-get: install spin and gcc yourself"
    say "Installing spin and gcc (model checking) ..."
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o=Dpkg::Use-Pty=0 \
        --no-install-recommends install spin gcc >/dev/null
    command -v spin >/dev/null || die "spin did not install: install Debian's spin package"
}

# iperf3: the stock client and server the host side of the benchmarks and interop tests use.
install_iperf3() {
    command -v iperf3 >/dev/null && return 0
    command -v apt-get >/dev/null || die "no apt-get: install iperf3 yourself"
    say "Installing iperf3 (host side of the throughput benchmarks) ..."
    as_root apt-get update -qq
    # The package asks whether to start a daemon; noninteractive answers no.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o=Dpkg::Use-Pty=0 \
        --no-install-recommends install iperf3 >/dev/null
    command -v iperf3 >/dev/null || die "iperf3 did not install: install Debian's iperf3 package"
}

# ping and ip: the host side of the tap networking option (nic = "tap" in a topology) runs the real
# ping in a network namespace that ip creates.
install_net_tools() {
    command -v ping >/dev/null && command -v ip >/dev/null && return 0
    command -v apt-get >/dev/null || die "no apt-get: install ping (iputils-ping) and ip (iproute2) yourself"
    local packages=()
    command -v ping >/dev/null || packages+=(iputils-ping)
    command -v ip >/dev/null || packages+=(iproute2)
    say "Installing ${packages[*]} (host side of the tap networking option) ..."
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o=Dpkg::Use-Pty=0 \
        --no-install-recommends install "${packages[@]}" >/dev/null
    command -v ping >/dev/null || die "ping did not install: install Debian's iputils-ping package"
    command -v ip >/dev/null || die "ip did not install: install Debian's iproute2 package"
}

# passt: the host side of the passt networking option (nic = "passt" in a topology; the bench
# measures the host paths over it next to user networking).
install_passt() {
    command -v passt >/dev/null && return 0
    command -v apt-get >/dev/null || die "no apt-get: install passt yourself"
    say "Installing passt (host side of the passt networking option) ..."
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o=Dpkg::Use-Pty=0 \
        --no-install-recommends install passt >/dev/null
    command -v passt >/dev/null || die "passt did not install: install Debian's passt package"
}

# What scripts/linux-guest.sh needs to build the bench's stock Linux guest: cpio (the initramfs),
# Debian's archive keyring (apt checks the arm64 lists against it; Ubuntu has the package too),
# readelf and strings (iperf3's libraries, the modules' dependencies) and xz (the modules).
install_linux_guest_tools() {
    local packages=()
    command -v cpio >/dev/null || packages+=(cpio)
    [ -r /usr/share/keyrings/debian-archive-keyring.gpg ] || packages+=(debian-archive-keyring)
    { command -v readelf >/dev/null && command -v strings >/dev/null; } || packages+=(binutils)
    command -v xz >/dev/null || packages+=(xz-utils)
    [ ${#packages[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "no apt-get: install ${packages[*]} yourself"
    say "Installing ${packages[*]} (to build the bench's stock Linux guest) ..."
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o=Dpkg::Use-Pty=0 \
        --no-install-recommends install "${packages[@]}" >/dev/null
    command -v cpio >/dev/null || die "cpio did not install: install Debian's cpio package"
}

# The stock Debian arm64 Linux guest the bench measures beside sluice (its `linux` group) and a
# QEMU test boots: fetched with apt's signature checks into ~/.cache/sluice/linux-guest, once.
# Without it the bench still runs (that group says why it has no figures); the tests need it.
install_linux_guest() {
    if ! scripts/linux-guest.sh; then
        [ "$1" = required ] && die "the stock Linux guest could not be fetched (see above)"
        say "run.sh: going on without the stock Linux guest: the bench's 'linux' group will say it is missing"
    fi
}

setup() {
    install_qemu
    install_rust
    install_model_checker
    install_iperf3
    install_net_tools
    install_passt
    install_linux_guest_tools
}

objcopy_bin() {
    local sysroot host
    sysroot=$(rustc --print sysroot)
    host=$(rustc -vV | sed -n 's/^host: //p')
    # The toolchain's llvm-objcopy (rust-objcopy) links the toolchain's libLLVM.
    LD_LIBRARY_PATH="$sysroot/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$sysroot/lib/rustlib/$host/bin/rust-objcopy" "$@"
}

build() {
    say "Building (release) ..."
    # The images with the `vm` profile (Cargo.toml: release plus whole-program optimisation).
    cargo build --quiet --profile vm -p hypervisor --target "$HV_TARGET"
    cargo build --quiet --profile vm -p guest-frontend -p driver-domain --target "$VM_TARGET"
    cargo build --quiet --release -p sluice-harness
    mkdir -p "$OUT"
    cp "target/$HV_TARGET/vm/hypervisor" "$OUT/hypervisor.elf"
    objcopy_bin -O binary "$OUT/hypervisor.elf" "$OUT/hypervisor.bin"
    for vm in guest-frontend driver-domain; do
        objcopy_bin -O binary "target/$VM_TARGET/vm/$vm" "$OUT/$vm.bin"
        # The ELF (symbols, debug info) names the PCs of the profiler's samples.
        cp "target/$VM_TARGET/vm/$vm" "$OUT/$vm.elf"
    done
}

run_tests() {
    say "== formatting and lints"
    cargo fmt --all -- --check || die "code is not formatted: run 'cargo fmt --all'"
    cargo clippy --quiet -p shared-abi -p sluice-harness --all-targets -- -D warnings
    cargo clippy --quiet -p hypervisor -p driver-domain -p vm-net --lib --tests -- -D warnings
    # On its own: its host tests use arm-gic's fake registers, which must not reach the others.
    cargo clippy --quiet -p vm-runtime --lib --tests -- -D warnings
    cargo clippy --quiet -p hypervisor --target "$HV_TARGET" -- -D warnings
    cargo clippy --quiet -p vm-runtime -p vm-net -p guest-frontend -p driver-domain --target "$VM_TARGET" -- -D warnings
    say "== host unit tests"
    cargo test -p shared-abi -p hypervisor -p sluice-harness --lib --bins
    # The lock order's compile_fail examples: taking locks out of order must not compile.
    cargo test -p hypervisor --doc
    # The driver domain's binary is a VM image; only its library is host code. vm-net's tests
    # include interop with the host's stock iperf3 (installed by setup).
    cargo test -p driver-domain -p vm-net --lib
    # vm-runtime's pure parts (shared-memory copies and windows, console chunks, probe checks).
    cargo test -p vm-runtime --lib
    say "== model check (Spin): notification suppression never loses a wake-up; the I/O request page answers each request once"
    bash models/check.sh
    say "== QEMU integration tests (each boots QEMU with a hard timeout)"
    SLUICE_ARTIFACTS="$PWD/$OUT" cargo test -p sluice-harness --test qemu -- --test-threads=1
}

topology=topologies/default.toml
cmd=demo
bench_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        test|setup|build|demo|bench|fuzz) cmd=$1 ;;
        profile)
            cmd=profile
            if [ $# -gt 1 ] && [ "${2#-}" = "$2" ]; then shift; bench_args+=(--only "$1"); fi
            ;;
        --short) bench_args+=(--short) ;;
        --only) shift; bench_args+=(--only "${1:?--only needs scenario groups, e.g. host_guest,passthrough}") ;;
        --only=*) bench_args+=(--only "${1#--only=}") ;;
        --topology) shift; topology=${1:?--topology needs a file} ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (try ./run.sh --help)" ;;
    esac
    shift
done

setup
case "$cmd" in
    setup) say "Prerequisites are installed." ;;
    build) build ;;
    demo)
        build
        SLUICE_ARTIFACTS="$PWD/$OUT" target/release/sluice-run --topology "$topology" --json target/demo/results.json
        if [ "$topology" = topologies/default.toml ]; then
            say "Driver-domain restart (issue 14): the NIC's driver domain panics under an iperf3 stream"
            SLUICE_ARTIFACTS="$PWD/$OUT" target/release/sluice-run --topology topologies/restart.toml \
                --json target/demo/restart.json
        fi
        ;;
    test)
        install_linux_guest required
        build
        run_tests
        ;;
    fuzz)
        build
        # The fuzzers print their seeds and histograms live; the summary checks that the
        # hypervisor survived, every fuzzer reported and the bystanders finished unharmed.
        SLUICE_ARTIFACTS="$PWD/$OUT" target/release/sluice-run --topology topologies/fuzz.toml \
            --timeout 1200 --json target/fuzz/results.json
        ;;
    bench)
        install_linux_guest optional
        build
        SLUICE_ARTIFACTS="$PWD/$OUT" target/release/sluice-bench --json target/bench/results.json "${bench_args[@]}"
        ;;
    profile)
        build
        SLUICE_ARTIFACTS="$PWD/$OUT" target/release/sluice-bench --profile --json target/bench/profile.json "${bench_args[@]}"
        ;;
esac
