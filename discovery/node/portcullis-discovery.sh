#!/bin/sh
# portcullis-discovery — the one command a Portcullis discovery certificate may run
# (its `force-command`). Installed as /usr/local/libexec/portcullis-discovery, owned by
# root, mode 0755. Prints the delimited report the CA parses (discovery/src/report.rs):
# `dmidecode -t 1` and `-t 3` through `sudo -n` (the sudoers drop-in permits exactly
# those two), `ip -o link`, and `ethtool` / `ethtool -i` for each interface that has a
# device behind it in sysfs (no bridges, taps, veths or bonds). It takes no input:
# whatever the client asked to run is ignored.
set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin
LC_ALL=C
export PATH LC_ALL
SUDO=/usr/bin/sudo
DMIDECODE=/usr/sbin/dmidecode
SYSFS_NET=/sys/class/net

# A section's output ends with exactly one newline, so the next marker starts a line.
section() {
    name=$1
    shift
    out=$("$@" 2>/dev/null)
    printf '@@section %s\n%s\n' "$name" "$out"
}

echo "@@portcullis-discovery v1"
section dmidecode-t1 "$SUDO" -n "$DMIDECODE" -t 1
section dmidecode-t3 "$SUDO" -n "$DMIDECODE" -t 3
section ip-link ip -o link show
for dev in "$SYSFS_NET"/*; do
    iface=${dev##*/}
    [ -e "$dev/device" ] || continue
    case "$iface" in '' | *[!A-Za-z0-9._-]*) continue ;; esac
    section "ethtool $iface" ethtool "$iface"
    section "ethtool-i $iface" ethtool -i "$iface"
done
echo "@@end"
