#!/bin/sh
# Compile the userspace data path's native helpers (gatekeeper/vnet/native/*.c) into build/native/
# as shared libraries, against Debian's libssl-dev (OpenSSL's EVP AES-GCM). Optional at run time:
# without them the gatekeeper uses its Python path and says so (softudc_vnet_esp_engine).
set -eu
cd "$(dirname "$0")/.."
out=build/native
mkdir -p "$out"
cc=${CC:-gcc}
for src in gatekeeper/vnet/native/*.c; do
	lib="$out/lib$(basename "$src" .c).so"
	if [ ! -e "$lib" ] || [ "$src" -nt "$lib" ] || [ "$0" -nt "$lib" ]; then
		"$cc" -O2 -g -Wall -Wextra -Werror -std=c11 -fPIC -shared -fvisibility=default \
			-D_FORTIFY_SOURCE=2 -fstack-protector-strong "$src" -o "$lib.tmp" -lcrypto
		mv "$lib.tmp" "$lib"
		echo "build-native: $lib"
	fi
done
