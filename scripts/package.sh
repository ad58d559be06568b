#!/usr/bin/env bash
# Builds the Debian packages from binaries already built:
#
#   cargo build --release --bins && ./scripts/package.sh release   # what you ship
#   ./scripts/package.sh debug                                     # CI's package check
#
# Three packages land in target/packages/: `portcullisd` (the server, its units, an
# example configuration and policy under /etc/portcullis), `portcullis` (the CLI) and
# `portcullis-enroll` (the node tool and its refresh timer). Binaries are stripped. The
# units use DynamicUser=, so no system account is created; the maintainer scripts only
# tell systemd about the units — nothing is enabled or started until the operator has
# configured it (`portcullisd check --config …`, then `systemctl enable --now …`); an
# upgrade restarts the units that run, and stops none.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=${1:-release}
bin_dir="target/$profile"
out="target/packages"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

for b in portcullisd portcullis portcullis-enroll; do
    [[ -x "$bin_dir/$b" ]] || { echo "error: $bin_dir/$b is missing; build it first" >&2; exit 1; }
done

# stage PACKAGE DESCRIPTION DEPENDS: a package tree with its control file.
stage() {
    local pkg=$1 description=$2 depends=$3
    mkdir -p "$work/$pkg/DEBIAN"
    cat > "$work/$pkg/DEBIAN/control" <<EOF
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: Portcullis <portcullis@example.invalid>
Section: admin
Priority: optional
Depends: $depends
Description: $description
EOF
}

install_bin() { install -D -m 0755 "$bin_dir/$1" "$work/$2/usr/bin/$1"; strip "$work/$2/usr/bin/$1"; }
install_file() { install -D -m "$1" "$2" "$work/$3"; }

# Maintainer scripts: systemd learns about (and forgets) the units; nothing is started
# that was not running. Units are stopped only when the package goes away, not on an
# upgrade: the enrollment tool's refresh timer, stopped by every upgrade and started by
# nothing, left nodes without new revocations until their next reboot (found in
# review). After an upgrade, units that run are restarted onto the new binary.
maintainer_scripts() {
    local pkg=$1 units=$2
    cat > "$work/$pkg/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ "\$1" = configure ] && [ -n "\$2" ]; then
        for unit in $units; do systemctl try-restart "\$unit" 2>/dev/null || true; done
    fi
fi
EOF
    cat > "$work/$pkg/DEBIAN/prerm" <<EOF
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && { [ "\$1" = remove ] || [ "\$1" = deconfigure ]; }; then
    for unit in $units; do systemctl stop "\$unit" 2>/dev/null || true; done
fi
EOF
    cat > "$work/$pkg/DEBIAN/postrm" <<EOF
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
if [ "\$1" = purge ]; then
    echo "portcullis: data under /var/lib/private is kept; delete it yourself if you mean to" >&2
fi
EOF
    chmod 0755 "$work/$pkg/DEBIAN/postinst" "$work/$pkg/DEBIAN/prerm" "$work/$pkg/DEBIAN/postrm"
}

stage portcullisd "Portcullis server: SSH certificate authority, bastion and edge agent" "libc6, openssh-client"
install_bin portcullisd portcullisd
for unit in portcullisd.service portcullisd-ca.service portcullisd-bastion.service portcullisd-agent.service; do
    install_file 0644 "deploy/$unit" "portcullisd/lib/systemd/system/$unit"
done
install_file 0644 deploy/portcullisd.toml portcullisd/etc/portcullis/portcullisd.toml
install_file 0644 deploy/examples/policy/pve.toml portcullisd/etc/portcullis/policy/pve.toml
printf '/etc/portcullis/portcullisd.toml\n/etc/portcullis/policy/pve.toml\n' > "$work/portcullisd/DEBIAN/conffiles"
maintainer_scripts portcullisd "portcullisd.service portcullisd-ca.service portcullisd-bastion.service portcullisd-agent.service"

stage portcullis "Portcullis CLI: sign in, short-lived SSH certificates, administration" "libc6, openssh-client"
install_bin portcullis portcullis
# Completions and the manual page, generated from the CLI's own grammar.
mkdir -p "$work/portcullis/usr/share/bash-completion/completions" "$work/portcullis/usr/share/man/man1"
"$bin_dir/portcullis" completions bash > "$work/portcullis/usr/share/bash-completion/completions/portcullis"
"$bin_dir/portcullis" man | gzip -9n > "$work/portcullis/usr/share/man/man1/portcullis.1.gz"

stage portcullis-enroll "Portcullis node enrollment: trust the CA safely, keep it fresh, take it away" \
    "libc6, openssh-server"
install_bin portcullis-enroll portcullis-enroll
install_file 0644 deploy/portcullis-enroll-refresh.service portcullis-enroll/lib/systemd/system/portcullis-enroll-refresh.service
install_file 0644 deploy/portcullis-enroll-refresh.timer portcullis-enroll/lib/systemd/system/portcullis-enroll-refresh.timer
maintainer_scripts portcullis-enroll "portcullis-enroll-refresh.timer"

for pkg in portcullisd portcullis portcullis-enroll; do
    size=$(du -sk --exclude=DEBIAN "$work/$pkg" | cut -f1)
    echo "Installed-Size: $size" >> "$work/$pkg/DEBIAN/control"
    dpkg-deb --root-owner-group --build -Zxz -z1 "$work/$pkg" "$out/${pkg}_${version}_${arch}.deb" >/dev/null
    echo "$out/${pkg}_${version}_${arch}.deb"
done
