#!/usr/bin/env bash
# The stock Linux guest of the bench's `linux` group (issue 11's baseline): Debian's arm64 kernel
# from bookworm-backports (6.12) and an initramfs with busybox and Debian's iperf3, whose /init
# brings eth0 up at QEMU user networking's defaults and runs `iperf3 -s`.
#
#   scripts/linux-guest.sh            make sure the image is built (quiet when it is)
#   scripts/linux-guest.sh --print    the same, then print the two paths (vmlinuz, initramfs)
#   scripts/linux-guest.sh --refresh  look up the package versions again even if an image exists
#
# The packages come through apt itself, with apt's own signature checks (the Release files are
# checked against Debian's archive keyring, each .deb against the hashes they sign), but with a
# private state, cache and sources list: the host's apt configuration and package lists are not
# touched. Everything is cached outside the clone, in $SLUICE_LINUX_GUEST_CACHE (default
# ~/.cache/sluice/linux-guest), one directory per set of package versions (and version of this
# script), and `current` points at the newest. A built image is reused without asking the network for 7 days; after that (or
# with --refresh) the versions are looked up again and a new image is built only if one changed.
set -euo pipefail

CACHE=${SLUICE_LINUX_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/linux-guest}
MIRROR=${SLUICE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# The kernel metapackage comes from backports (6.12, the kernel of the user's stock guest);
# everything else from bookworm. The libraries are iperf3's (checked below with readelf).
KERNEL_META=linux-image-arm64
PACKAGES=(busybox-static iperf3 libiperf0 libc6 libssl3 libsctp1)
# virtio-net is a module in Debian's kernel (virtio and virtio-pci are built in); its
# dependencies are read from the modules themselves.
MODULES=(virtio_net)
REUSE_DAYS=7
GUEST_IP=10.0.2.15/24
GATEWAY=10.0.2.2
# The harness (tests/src/linux_guest.rs) waits for READY and stops on a line after its tests.
READY='sluice-linux-guest: iperf3 server ready'
HEARTBEAT='sluice-linux-guest: alive'

die() {
    printf 'linux-guest.sh: %s\n' "$*" >&2
    printf 'linux-guest.sh: the bench'\''s stock Linux guest is not available; fix the above and run scripts/linux-guest.sh again (it is idempotent)\n' >&2
    exit 1
}

print=0
refresh=0
for arg in "$@"; do
    case "$arg" in
        --print) print=1 ;;
        --refresh) refresh=1 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg'" ;;
    esac
done

done_paths() {
    [ "$print" = 1 ] && printf '%s\n%s\n' "$CACHE/current/vmlinuz" "$CACHE/current/initramfs.gz"
    exit 0
}

# An image is built from the package versions and this script (its /init, its module list): a
# change to either is a new image.
recipe=$(sha256sum <"$0" | cut -c1-16)
complete() {
    [ -s "$1/vmlinuz" ] && [ -s "$1/initramfs.gz" ] && [ -s "$1/packages.txt" ] &&
        [ "$(cat "$1/recipe" 2>/dev/null)" = "$recipe" ]
}

# Fast path: a recent image of this recipe, no network.
if [ "$refresh" = 0 ] && complete "$CACHE/current" &&
    [ -n "$(find "$CACHE/current/packages.txt" -mtime -"$REUSE_DAYS" 2>/dev/null)" ]; then
    done_paths
fi

for tool in apt-get apt-cache dpkg-deb cpio gzip xz readelf strings flock sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' is missing (./run.sh setup installs cpio; the others are Debian's apt, dpkg, gzip, xz-utils, binutils, util-linux, coreutils)"
done
[ -r "$KEYRING" ] || die "$KEYRING is missing: install Debian's debian-archive-keyring package"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
# Another run may have built it while this one waited for the lock.
if [ "$refresh" = 0 ] && complete "$CACHE/current" &&
    [ -n "$(find "$CACHE/current/packages.txt" -mtime -"$REUSE_DAYS" 2>/dev/null)" ]; then
    done_paths
fi

# ---- apt with a private root --------------------------------------------------------------------
APTDIR=$CACHE/apt
mkdir -p "$APTDIR"/{state/lists/partial,cache/archives/partial,etc/apt.conf.d,etc/sources.list.d,etc/preferences.d}
touch "$APTDIR/state/status"
cat >"$APTDIR/etc/sources.list" <<EOF
deb [arch=arm64 signed-by=$KEYRING] $MIRROR bookworm main
deb [arch=arm64 signed-by=$KEYRING] $MIRROR bookworm-backports main
EOF
# APT_CONFIG is read before the host's apt.conf.d, so pointing Parts at an empty directory
# leaves the host's settings (proxies aside, which come from the environment) out entirely.
cat >"$APTDIR/etc/apt.conf" <<EOF
Dir::Etc::Parts "$APTDIR/etc/apt.conf.d";
Dir::Etc::Main "/dev/null";
EOF
export APT_CONFIG=$APTDIR/etc/apt.conf
apt_opts=(
    -o "Dir::State=$APTDIR/state" -o "Dir::State::status=$APTDIR/state/status"
    -o "Dir::Cache=$APTDIR/cache" -o "Dir::Etc::SourceList=$APTDIR/etc/sources.list"
    -o "Dir::Etc::SourceParts=$APTDIR/etc/sources.list.d"
    -o "Dir::Etc::Preferences=$APTDIR/etc/preferences"
    -o "Dir::Etc::PreferencesParts=$APTDIR/etc/preferences.d"
    -o APT::Architecture=arm64 -o APT::Architectures=arm64 -o Acquire::Languages=none
)
# apt drops to the _apt user for downloads, which cannot write into root's home.
[ "$(id -u)" = 0 ] && apt_opts+=(-o APT::Sandbox::User=root)

log=$CACHE/last-fetch.log
: >"$log"
apt-get "${apt_opts[@]}" -q update >>"$log" 2>&1 ||
    die "apt-get update of Debian's arm64 lists from $MIRROR failed (see $log)"

# The kernel metapackage names the versioned image package.
kernel_pkg=$(apt-cache "${apt_opts[@]}" show "$KERNEL_META/bookworm-backports" 2>>"$log" |
    sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -n 1)
[ -n "$kernel_pkg" ] || die "no $KERNEL_META in bookworm-backports (see $log)"

# Each package's candidate version, for the cache key.
versions=""
for p in "$kernel_pkg" "${PACKAGES[@]}"; do
    v=$(apt-cache "${apt_opts[@]}" policy "$p" 2>>"$log" | sed -n 's/^  Candidate: //p')
    [ -n "$v" ] && [ "$v" != "(none)" ] || die "no arm64 candidate for package $p (see $log)"
    versions+="$p=$v"$'\n'
done
key=$(printf '%s%s' "$versions" "$recipe" | sha256sum | cut -c1-16)
out=$CACHE/$key
if complete "$out"; then
    touch "$out/packages.txt"
    ln -sfn "$key" "$CACHE/current"
    done_paths
fi

echo "Fetching the stock Linux guest for the bench ($kernel_pkg, busybox, iperf3) ..." >&2
work=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/x" "$work/root"
(cd "$work/debs" && apt-get "${apt_opts[@]}" -q download "$kernel_pkg" "${PACKAGES[@]}") >>"$log" 2>&1 ||
    die "apt-get download failed (see $log)"
for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$work/x" || die "cannot unpack $deb"
done

# ---- the initramfs ------------------------------------------------------------------------------
x=$work/x
r=$work/root
kver=${kernel_pkg#linux-image-}
mkdir -p "$r"/{bin,dev,proc,sys,tmp,lib/modules,lib/aarch64-linux-gnu,usr/bin,usr/lib/aarch64-linux-gnu}
cp "$x/bin/busybox" "$r/bin/busybox"
cp "$x/usr/bin/iperf3" "$r/usr/bin/iperf3"
# iperf3's shared libraries, found by name in the unpacked packages, each one's own needs too.
find_lib() {
    local d
    for d in lib/aarch64-linux-gnu usr/lib/aarch64-linux-gnu; do
        [ -e "$x/$d/$1" ] && { echo "$d/$1"; return 0; }
    done
    return 1
}
todo=(usr/bin/iperf3)
seen=" "
while [ ${#todo[@]} -gt 0 ]; do
    file=${todo[0]}
    todo=("${todo[@]:1}")
    for lib in $(readelf -d "$x/$file" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        case "$seen" in *" $lib "*) continue ;; esac
        seen+="$lib "
        path=$(find_lib "$lib") || die "iperf3 needs $lib, which none of the packages has"
        cp -L "$x/$path" "$r/$path"
        todo+=("$path")
    done
done
# The loader, where the binaries' PT_INTERP says.
cp -L "$x/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1" "$r/lib/aarch64-linux-gnu/"
ln -s aarch64-linux-gnu/ld-linux-aarch64.so.1 "$r/lib/ld-linux-aarch64.so.1"

# The modules, dependencies first (from each module's own `depends=`), decompressed here because
# busybox's insmod cannot.
moddir=$x/lib/modules/$kver/kernel
[ -d "$moddir" ] || die "the kernel package has no modules under lib/modules/$kver"
load_order=()
add_module() {
    local name=$1 file dep
    case " ${load_order[*]:-} " in *" $name "*) return 0 ;; esac
    file=$(find "$moddir" -name "$name.ko*" -o -name "${name//_/-}.ko*" | head -n 1)
    [ -n "$file" ] || die "module $name is not in the kernel package"
    case "$file" in
        *.xz) xz -dc "$file" >"$r/lib/modules/$name.ko" ;;
        *) cp "$file" "$r/lib/modules/$name.ko" ;;
    esac
    for dep in $(strings -a "$r/lib/modules/$name.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
        add_module "${dep//-/_}"
    done
    load_order+=("$name")
}
for m in "${MODULES[@]}"; do add_module "$m"; done

cat >"$r/init" <<EOF
#!/bin/busybox sh
# The bench's stock Linux guest: eth0 at QEMU user networking's defaults, then iperf3's server.
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin LD_LIBRARY_PATH=/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ${load_order[*]}; do insmod /lib/modules/\$m.ko || echo "sluice-linux-guest: insmod \$m failed"; done
n=0
while [ ! -e /sys/class/net/eth0 ] && [ \$n -lt 100 ]; do sleep 0.1; n=\$((n + 1)); done
ip link set lo up
ip addr add $GUEST_IP dev eth0
ip link set eth0 up
ip route add default via $GATEWAY
echo "sluice-linux-guest: \$(uname -r), eth0 \$(cat /sys/class/net/eth0/address) at $GUEST_IP"
(while true; do iperf3 -s; sleep 1; done) &
n=0
while ! netstat -ltn | grep -q ':5201 ' && [ \$n -lt 100 ]; do sleep 0.1; n=\$((n + 1)); done
echo "$READY"
# A line a second: the harness stops QEMU when a line arrives after its tests are done.
(while true; do sleep 1; echo "$HEARTBEAT"; done) &
# PID 1 must not exit: serve for good (the harness kills QEMU).
while true; do wait; sleep 1; done
EOF
chmod 755 "$r/init"

mkdir -p "$work/out"
(cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -9n) >"$work/out/initramfs.gz" ||
    die "cannot build the initramfs (cpio, gzip)"
cp "$x/boot/vmlinuz-$kver" "$work/out/vmlinuz" || die "the kernel package has no boot/vmlinuz-$kver"
printf '%s' "$versions" >"$work/out/packages.txt"
printf '%s\n' "$recipe" >"$work/out/recipe"
rm -rf "$out"
mv "$work/out" "$out"
ln -sfn "$key" "$CACHE/current"
# Older images go; the apt cache keeps no .debs.
for d in "$CACHE"/*/; do
    d=${d%/}
    case "${d##*/}" in "$key" | apt | current | build.*) ;; *) [ -e "$d/packages.txt" ] && rm -rf "$d" ;; esac
done
echo "Stock Linux guest ready: $out" >&2
done_paths
