#!/usr/bin/env bash
# The whole test suite, as CI runs it: `./scripts/test.sh` from anywhere in the repository.
#
# Installs what the tests need when it is missing (OpenSSH server and client, PostgreSQL,
# OpenLDAP, Chromium, Node.js packages, cargo-nextest), then runs formatting, lints, a
# build of the binaries the integration tests start, every test, and a few seconds of
# every fuzz target. Tests that need a real peer fail (never skip) when the peer is
# missing, so a broken environment cannot pass quietly.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> [%ss] %s\n' "$SECONDS" "$*"; }

missing_packages() {
    [[ -x /usr/sbin/sshd ]] || return 0
    command -v ssh-keygen >/dev/null 2>&1 || return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || return 0
    [[ -x /usr/sbin/slapd && -x /usr/bin/ldapadd ]] || return 0
    [[ -x /usr/bin/chromium ]] || return 0
    [[ -x /usr/sbin/visudo ]] || return 0
    command -v ip >/dev/null 2>&1 || return 0
    command -v systemd-analyze >/dev/null 2>&1 || return 0
    command -v openssl >/dev/null 2>&1 || return 0
    return 1
}

if missing_packages; then
    step "installing OpenSSH, PostgreSQL, OpenLDAP, Chromium, iproute2 and sudo"
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: sshd, ssh-keygen, PostgreSQL, slapd, chromium, ip or visudo is missing and this is not root;" >&2
        echo "install openssh-server openssh-client postgresql slapd ldap-utils chromium iproute2 sudo systemd openssl and run again" >&2
        exit 1
    fi
    apt-get update
    # The postgresql package starts a system cluster; the tests ignore it and run their own.
    DEBIAN_FRONTEND=noninteractive apt-get install -y openssh-server openssh-client postgresql
    # slapd starts a system instance on 389 too; the LDAP tests run private ones on free ports.
    DEBIAN_FRONTEND=noninteractive apt-get install -y slapd ldap-utils
    # The browser-console tests drive Debian's headless Chromium (never a downloaded one);
    # the bastion's network-namespace test needs `ip`; hardware-discovery enrollment
    # validates its sudoers drop-in with sudo's `visudo -cf`.
    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium iproute2 sudo
    # The shipped units are checked with systemd-analyze (verify, security); the TLS
    # reload test makes and reads certificates with the openssl tool.
    DEBIAN_FRONTEND=noninteractive apt-get install -y systemd openssl
fi

# The OIDC tests run a real OpenID Connect provider (oidc-provider) under Node.js.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    step "installing Node.js"
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: node/npm is missing and this is not root; install nodejs and npm and run again" >&2
        exit 1
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
fi
if [[ ! -d tests/idp/node_modules/oidc-provider ]]; then
    step "npm ci --prefix tests/idp"
    npm ci --prefix tests/idp --no-audit --no-fund
fi
# playwright-core drives /usr/bin/chromium for the browser tests; axe-core checks each
# view's accessibility.
if [[ ! -d tests/browser/node_modules/playwright-core || ! -d tests/browser/node_modules/axe-core ]]; then
    step "npm ci --prefix tests/browser"
    npm ci --prefix tests/browser --no-audit --no-fund
fi

# The bastion's key-exchange test runs ssh-audit (PyPI) against it; the Proxmox VE
# inventory tests run fakepve (PyPI), a fake of the PVE API, as their sites.
if [[ ! -x tests/pytools/.venv/bin/ssh-audit ]] || ! tests/pytools/.venv/bin/python -c 'import fakepve, cryptography' 2>/dev/null; then
    step "python3 -m venv tests/pytools/.venv (ssh-audit, fakepve)"
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        if [[ $(id -u) -ne 0 ]]; then
            echo "error: python3-venv is missing and this is not root; install it and run again" >&2
            exit 1
        fi
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
    fi
    python3 -m venv tests/pytools/.venv
    tests/pytools/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/pytools/requirements.txt
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
    step "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

# sshd refuses to start without its privilege-separation directory.
if [[ $(id -u) -eq 0 ]]; then
    mkdir -p /run/sshd
fi

# A cold run needs about 25 GB under target/; say so up front rather than fail with
# "No space left on device" twenty minutes in. Incremental state only helps repeated
# local builds, and it doubles the footprint, so a CI run (CI=true) goes without.
free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
step "disk: $((free_kb / 1024 / 1024)) GiB free"
if (( free_kb < 25 * 1024 * 1024 )); then
    echo "warning: less than 25 GiB free here; the build may run out of space" >&2
fi
if [[ ${CI:-} == true ]]; then
    export CARGO_INCREMENTAL=0
fi

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "scripts/import_cycles.py (no module names a module that names it back)"
./scripts/import_cycles.py

# Integration tests run the real binaries; nextest does not build other packages' bins.
step "cargo build --bins"
cargo build --bins

step "cargo nextest run --workspace --no-fail-fast"
cargo nextest run --workspace --no-fail-fast

# Coverage-guided fuzzing smoke: every target a few seconds (longer runs: scripts/fuzz.sh).
step "scripts/fuzz.sh 5"
./scripts/fuzz.sh 5

# The Debian packages, from the binaries built above: install, run, check the shipped
# configuration as installed, remove, purge.
step "packages: build, install, run, remove, purge"
./scripts/package.sh debug
if [[ $(id -u) -ne 0 ]]; then
    echo "error: installing the packages needs root" >&2
    exit 1
fi
dpkg -i target/packages/portcullisd_*.deb target/packages/portcullis_*.deb target/packages/portcullis-enroll_*.deb
/usr/bin/portcullisd --version
/usr/bin/portcullis --version
/usr/bin/portcullis-enroll --version
/usr/bin/portcullisd check --config /etc/portcullis/portcullisd.toml
/usr/bin/portcullis admin policy check /etc/portcullis/policy
dpkg -r portcullisd portcullis portcullis-enroll
dpkg -P portcullisd portcullis portcullis-enroll
[[ ! -e /usr/bin/portcullisd && ! -e /etc/portcullis/portcullisd.toml ]]

printf '\n==> all checks passed in %ss\n' "$SECONDS"
