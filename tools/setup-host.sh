#!/usr/bin/env bash
# Install what reconciler needs on a Debian 12 host, as root; fast and silent when nothing is
# missing. Used by `make demo` and `make test` (and so by CI).
set -euo pipefail

packages=(
  qemu-utils qemu-system-x86 libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
  pkg-config python3-venv python3-dev gcc util-linux
  # libvirt reads the host's SMBIOS tables with it when it starts
  dmidecode
  # UEFI firmware (firmware: uefi), found by libvirt through its firmware descriptors
  ovmf
  # to build the test guest (tools/guest) without loop devices or mounts
  mtools syslinux
  # to build the Debian cloud image the cloud-init test boots (tools/cloud-image), with no
  # mount: debootstrap into a directory, mkfs.ext4 -d from it
  debootstrap e2fsprogs
  # tests: a self-signed certificate for the HTTPS test server
  openssl
  # tests: a libvirtd the connection-loss test starts and kills itself (never as a service)
  libvirt-daemon
  # pull mode (--git): fetches and checks commit signatures (OpenPGP with gpg, SSH with
  # ssh-keygen)
  git gnupg openssh-client
  # /bin/kill, which the systemd units call to reload the daemon (absent from a minimal Debian)
  procps
  # tests: systemd-analyze checks the shipped units (systemd need not run for that)
  systemd
  # tests: promtool checks the shipped alert rules (contrib/prometheus); no service starts
  prometheus
)
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$package")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "setup: installing ${#missing[@]} Debian package(s) (a minute or two on a fresh host): ${missing[*]}"
  echo "setup: updating the package lists"
  apt-get update -qq
  # start no service while installing (libvirt-daemon would start a system libvirtd)
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    trap 'rm -f "$policy"' EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
  fi
  # debconf's notes ("delaying package configuration, since apt-utils is not installed") ask
  # nothing of the user: apt's messages are shown only when the install fails
  apt_log=$(mktemp)
  install=(apt-get install -y -qq --no-install-recommends)
  echo "setup: downloading"
  DEBIAN_FRONTEND=noninteractive "${install[@]}" --download-only "${missing[@]}" >"$apt_log" 2>&1 \
    || { cat "$apt_log" >&2; exit 1; }
  echo "setup: unpacking and configuring"
  DEBIAN_FRONTEND=noninteractive "${install[@]}" "${missing[@]}" >"$apt_log" 2>&1 \
    || { cat "$apt_log" >&2; exit 1; }
  rm -f "$apt_log"
  echo "setup: Debian packages installed"
fi

# libvirt's QEMU driver resolves this user when it starts, even when QEMU runs as root.
if ! getent passwd libvirt-qemu >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "setup: creating system user libvirt-qemu"
    useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
  else
    echo "setup: the system user libvirt-qemu is missing (run as root to create it)" >&2
    exit 1
  fi
fi

# libvirt re-probes QEMU (3 to 4 s) whenever the newest change time (ctime) of its loaded
# library and modules differs from the one its capabilities cache recorded. The embedded driver
# loads some modules lazily (storage-file at the first start), so when packages were installed
# at different times (libvirt-daemon after libvirt-daemon-driver-qemu) every process finds
# the cache outdated once and probes again. Give the files one change time (a chmod to their
# own mode changes nothing else); repeat if the chmod straddled a second.
libvirt_files() {
  find /usr/lib/x86_64-linux-gnu -maxdepth 1 -name 'libvirt*.so*' -type f
  find /usr/lib/x86_64-linux-gnu/libvirt -type f -name '*.so'
}
if [ "$(id -u)" -eq 0 ] && [ -d /usr/lib/x86_64-linux-gnu/libvirt ]; then
  for _ in 1 2 3; do
    if [ "$(libvirt_files | xargs stat -c %Z | sort -u | wc -l)" -le 1 ]; then break; fi
    echo "setup: giving libvirt's modules one change time (avoids QEMU re-probes)"
    libvirt_files | xargs stat -c '%a %n' | while read -r mode file; do chmod "$mode" "$file"; done
  done
fi
