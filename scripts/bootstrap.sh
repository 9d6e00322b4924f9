#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root): system packages, the .venv,
# the project installed in it. Quick when everything is already present.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
# Debian packages the code and the tests use. Keep one per line: dpkg-query checks each.
PACKAGES=(
    python3 python3-venv python3-dev gcc make
    iproute2 iputils-ping procps psmisc kmod ethtool curl
    tcpdump tshark iperf3 openvpn
    qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
    cpio xz-utils zstd
    etcd-server etcd-client
    debootstrap e2fsprogs fuse3
    libguestfs-tools
    clang llvm libbpf-dev bpftool
    libssl-dev  # OpenSSL's EVP AES-GCM for the native ESP engine (scripts/build-native.sh)
    openipmi ipmitool
    libnbd-bin
    libxml2-utils  # xmllint: virt-xml-validate checks domain XML against libvirt's schema
    prometheus
    nodejs  # and npm (below): scripts/build-console.sh
    chromium  # the console's browser e2e (Playwright drives it; no browser download)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "bootstrap: missing Debian packages: ${missing[*]}; run 'make bootstrap' as root" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer once, non-interactively.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    # libvirt-daemon-system creates the libvirt-qemu user the QEMU driver resolves before reading
    # qemu.conf; its postinst starts nothing here (no systemd).
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# libguestfs's supermin (virt-inspector, in `softudc bench images`) lstat()s /lib/modules while it
# builds its appliance; a container without kernel modules has none.
if [[ $(id -u) -eq 0 && ! -e /lib/modules ]]; then
    mkdir -p /lib/modules
fi

# The venv uses Debian's interpreter, so a pyenv or other python3 on PATH does not leak in.
PY=/usr/bin/python3
[[ -x "$PY" ]] || PY=$(command -v python3)
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "bootstrap: creating $VENV"
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.softudc-installed"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    echo "bootstrap: installing the project and its dev tools into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev,vm]'
    touch "$stamp"
fi

# Debian's own nodejs comes without npm (a separate package); NodeSource's includes it and
# conflicts with Debian's npm. Install npm only where the command is missing.
if ! command -v npm >/dev/null; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "bootstrap: npm is missing; run 'make bootstrap' as root" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

# The web console's front-end assets (htmx and its SSE extension, from the npm registry at the
# versions console/package-lock.json pins); rebuilt when the lock file is newer than them.
if [[ ! -f softudc/console/static/vendor/htmx.min.js || console/package-lock.json -nt softudc/console/static/vendor/htmx.min.js ]]; then
    scripts/build-console.sh
fi
