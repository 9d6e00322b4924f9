#!/bin/sh
# Compile the VNET eBPF data path (gatekeeper/vnet/bpf/*.c) into build/bpf/ with Debian's clang
# against libbpf-dev's headers. No kernel headers and no CO-RE: the object works on any >= 6.3 kernel.
set -eu
cd "$(dirname "$0")/.."
out=build/bpf
mkdir -p "$out"
for src in gatekeeper/vnet/bpf/*.c; do
	obj="$out/$(basename "$src" .c).o"
	if [ ! -e "$obj" ] || [ "$src" -nt "$obj" ]; then
		clang -O2 -g -Wall -Werror -target bpf -I"/usr/include/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)" \
			-c "$src" -o "$obj.tmp"
		mv "$obj.tmp" "$obj"
		echo "build-bpf: $obj"
	fi
done
