#!/usr/bin/env bash
# Build the test guest from Debian packages: vmlinuz (the cloud kernel) and initrd.img (busybox,
# the virtio modules, guest/init). Reproducible for a given package set; cached: it does nothing
# when OUTDIR already holds a guest built from the same inputs.
set -euo pipefail
OUT=$(realpath -m "${1:?usage: build-guest.sh OUTDIR}")
here=$(cd "$(dirname "$0")/.." && pwd)
find_kernel() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
kpkg=$(find_kernel)
if [[ -z "$kpkg" && $(id -u) -eq 0 ]]; then
    apt-get update -qq  # a machine whose package lists were never fetched
    kpkg=$(find_kernel)
fi
[[ -n "$kpkg" ]] || { echo "build-guest: no linux-image-cloud-amd64 in apt's lists; run 'apt-get update' as root" >&2; exit 1; }
bpkg=busybox-static
stamp="$kpkg $(apt-cache policy $bpkg | awk '/Candidate/{print $2}') $(sha256sum "$here/guest/init" "$0" | sha256sum | cut -c1-16)"
if [[ -f "$OUT/vmlinuz" && -f "$OUT/initrd.img" && "$(cat "$OUT/stamp" 2>/dev/null)" == "$stamp" ]]; then
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt-get download as root drops to _apt, which must be able to write here
cd "$work"
echo "build-guest: downloading $kpkg and $bpkg"
apt-get download -qq -o APT::Sandbox::User=root "$kpkg" "$bpkg"
dpkg-deb -x "$kpkg"_*.deb kernel
dpkg-deb -x "$bpkg"_*.deb busybox
kver=${kpkg#linux-image-}
depmod -b kernel "$kver"
mkdir -p root/bin root/etc root/lib/modules
cp busybox/bin/busybox root/bin/busybox
# The virtio drivers are modules in the cloud kernel; load them in dependency order.
modprobe -a -d kernel -S "$kver" --show-depends virtio_pci virtio_net virtio_blk \
    | awk '/^insmod/{print $2}' | while read -r path; do
        name=$(basename "$path")
        case "$name" in
            *.xz) xz -dc "$path" > "root/lib/modules/${name%.xz}"; name=${name%.xz} ;;
            *.zst) zstd -qdc "$path" > "root/lib/modules/${name%.zst}"; name=${name%.zst} ;;
            *) cp "$path" "root/lib/modules/$name" ;;
        esac
        grep -qx "$name" root/etc/modules.order 2>/dev/null || echo "$name" >> root/etc/modules.order
    done
install -m 755 "$here/guest/init" root/init
mkdir -p "$OUT"
(cd root && find . | sort | cpio -o -H newc --quiet --reproducible | gzip -9n) > "$OUT/initrd.img.tmp"
cp "kernel/boot/vmlinuz-$kver" "$OUT/vmlinuz.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
echo "$stamp" > "$OUT/stamp"
echo "build-guest: $OUT/vmlinuz ($kver) and $OUT/initrd.img ($(du -h "$OUT/initrd.img" | cut -f1))"
