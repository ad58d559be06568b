//! The `enroll.sh` bootstrap script the CA serves. It is fetched over TLS pinned to the
//! CA's key, so its contents (the pin, the binary's SHA-256) are authentic; it refuses to
//! run unless the operator's `--ca-fingerprint` matches the pin baked into it.

/// Renders the script for a CA reachable at `ca_url` whose TLS key pin is `pin`.
pub fn render(ca_url: &str, pin: &str, binary_sha256: &str) -> String {
    let curl_pin = portcullis_proto::pin::curl_pin(pin).unwrap_or_default();
    let pin_unpadded = pin.trim_end_matches('=');
    format!(
        r#"#!/bin/sh
# Portcullis node enrollment bootstrap, served by the CA at {ca_url}.
# Usage: curl -fsS --pinnedpubkey '{curl_pin}' -k {ca_url}/enroll.sh \
#          | sh -s -- --token TOKEN --ca-fingerprint {pin_unpadded}
set -eu
CA_URL='{ca_url}'
PIN='{pin_unpadded}'
CURL_PIN='{curl_pin}'
BINARY_SHA256='{binary_sha256}'
INSTALL_TO="${{PORTCULLIS_ENROLL_INSTALL_TO:-/usr/local/sbin/portcullis-enroll}}"

fingerprint=''
previous=''
for arg in "$@"; do
    case "$previous" in --ca-fingerprint) fingerprint="$arg" ;; esac
    case "$arg" in --ca-fingerprint=*) fingerprint="${{arg#--ca-fingerprint=}}" ;; esac
    previous="$arg"
done
if [ -z "$fingerprint" ]; then
    echo "enroll.sh: pass --ca-fingerprint SHA256:... as printed by the CA" >&2
    exit 2
fi
normalized=$(printf '%s' "$fingerprint" | sed -e 's#^sha256//#SHA256:#' -e 's/=*$//')
if [ "$normalized" != "$PIN" ]; then
    echo "enroll.sh: --ca-fingerprint does not match this CA's key; nothing was changed" >&2
    exit 3
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# -k: the certificate chain is not checked, the pinned public key is (stronger).
curl -fsS --pinnedpubkey "$CURL_PIN" -k -o "$tmp/portcullis-enroll" "$CA_URL/v1/download/portcullis-enroll"
if ! echo "$BINARY_SHA256  $tmp/portcullis-enroll" | sha256sum -c --status -; then
    echo "enroll.sh: downloaded binary does not match its SHA-256; nothing was changed" >&2
    exit 3
fi
install -m 0755 "$tmp/portcullis-enroll" "$INSTALL_TO"
"$INSTALL_TO" enroll --ca "$CA_URL" "$@"
# Enrolled: keep the CA keys, principals and KRL fresh.
if [ -z "${{PORTCULLIS_ENROLL_NO_TIMER:-}}" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    cat > /etc/systemd/system/portcullis-enroll-refresh.service <<'UNIT'
{service}UNIT
    cat > /etc/systemd/system/portcullis-enroll-refresh.timer <<'UNIT'
{timer}UNIT
    systemctl daemon-reload
    systemctl enable --now portcullis-enroll-refresh.timer
fi
"#,
        service = REFRESH_SERVICE,
        timer = REFRESH_TIMER,
    )
}

const REFRESH_SERVICE: &str = include_str!("../../deploy/portcullis-enroll-refresh.service");
const REFRESH_TIMER: &str = include_str!("../../deploy/portcullis-enroll-refresh.timer");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_embeds_pin_and_checksum() {
        let pin = portcullis_proto::pin::pin_of_spki(b"example key");
        let s = render("https://ca:8443", &pin, "00ff");
        assert!(s.starts_with("#!/bin/sh"));
        assert!(s.contains("BINARY_SHA256='00ff'"));
        assert!(s.contains(&format!("PIN='{pin}'")));
        let curl = portcullis_proto::pin::curl_pin(&pin).unwrap_or_default();
        assert!(s.contains(&format!("CURL_PIN='{curl}'")));
    }
}
