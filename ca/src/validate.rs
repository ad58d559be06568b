//! Validation of identifiers and records at the API's edge, the same on SQLite and
//! PostgreSQL: what passes here can be stored, logged, audited and put into a file on a
//! node without further escaping, and nothing that fails is stored in part.

use crate::error::CaError;
use portcullis_proto::NodeRecord;
use ssh_key::PublicKey;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Longest identifier taken from a path or a sign-in form.
pub const MAX_IDENTIFIER: usize = 256;
pub const MAX_ADDRESSES: usize = 32;
/// Host keys one node may pin.
pub const MAX_HOST_KEYS: usize = 8;
const MAX_TAGS: usize = 64;
const MAX_TAG_KEY: usize = 63;
const MAX_TEXT: usize = 255;

/// A session id as bastions make them: 32 lowercase hex digits. It also names a
/// recording's directory beside a SQLite database.
pub fn valid_session_id(id: &str) -> bool {
    id.len() == 32 && id.chars().all(|c| c.is_ascii_digit() || matches!(c, 'a'..='f'))
}

/// A peer-supplied identifier (a user name at sign-in, a name in a path): non-empty,
/// at most [`MAX_IDENTIFIER`] bytes, no control characters (NUL among them, which
/// PostgreSQL cannot store and C libraries cut strings at).
pub fn identifier<'a>(what: &str, s: &'a str) -> Result<&'a str, CaError> {
    if s.is_empty() || s.len() > MAX_IDENTIFIER || s.chars().any(char::is_control) {
        return Err(CaError::BadRequest(format!("{what} must be 1 to {MAX_IDENTIFIER} bytes of printable text")));
    }
    Ok(s)
}

/// Node names: what enrollment accepts (letters, digits, '-', '.', '_'; at most 253),
/// starting with a letter or digit, so `..` or `.hidden` never become a name — and not
/// only digits and dots. A node's host certificate always names the node, and users
/// trust the host CA for every host: a node an enroller named `10.20.0.5` would be
/// certified as that address (which another machine, enrolled later, has), and would
/// win a jump to `10.20.0.5`, which looks names up before addresses. (`ssh` also reads
/// `10.20.5` and `169090565` as IPv4 addresses.)
pub fn node_name(name: &str) -> Result<(), CaError> {
    let ok = name.len() <= 253
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !ok {
        return Err(CaError::BadRequest(
            "node name: letters, digits, '-', '.', '_', starting with a letter or digit (at most 253)".into(),
        ));
    }
    if name.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(CaError::BadRequest(
            "node name: an address is not a name (it would be certified as that address); name the node and give \
             the address as one of its addresses"
                .into(),
        ));
    }
    Ok(())
}

fn host_name(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        })
}

/// A node address: an IP address or host name, optionally with a port
/// (`10.0.0.5`, `10.0.0.5:2222`, `[2001:db8::5]:22`, `pve01.example:22`).
pub fn address(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() || s.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => host_name(host) && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => host_name(s),
    }
}

/// The host an [`address`] names, as a client would name it (`[::1]:22` → `::1`,
/// `Host:2222` → `host`): for telling which nodes claim the same one.
pub fn address_host(s: &str) -> String {
    let s = s.trim();
    if s.parse::<IpAddr>().is_ok() {
        return s.to_ascii_lowercase();
    }
    if let Ok(socket) = s.parse::<SocketAddr>() {
        return socket.ip().to_string();
    }
    s.rsplit_once(':').map_or(s, |(host, _)| host).to_ascii_lowercase()
}

/// A node's addresses: at most [`MAX_ADDRESSES`], each an [`address`].
pub fn addresses(list: &[String]) -> Result<(), CaError> {
    if list.len() > MAX_ADDRESSES || !list.iter().all(|a| address(a)) {
        return Err(CaError::BadRequest(format!(
            "addresses: at most {MAX_ADDRESSES} IP addresses or host names, each with an optional port"
        )));
    }
    Ok(())
}

/// Host keys to pin: at most [`MAX_HOST_KEYS`] OpenSSH public key lines of the types
/// user keys may have, parsed.
pub fn host_keys(keys: &[String]) -> Result<Vec<PublicKey>, CaError> {
    if keys.len() > MAX_HOST_KEYS {
        return Err(CaError::BadRequest(format!("at most {MAX_HOST_KEYS} host keys")));
    }
    keys.iter()
        .map(|k| {
            portcullis_sshcert::parse_user_public_key(k).map_err(|e| CaError::BadRequest(format!("host key: {e}")))
        })
        .collect()
}

fn tag_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_TAG_KEY
        && k.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn text(s: &str) -> bool {
    s.len() <= MAX_TEXT && !s.chars().any(char::is_control)
}

fn map(what: &str, m: &BTreeMap<String, String>) -> Result<(), CaError> {
    if m.len() > MAX_TAGS || !m.iter().all(|(k, v)| tag_key(k) && text(v)) {
        return Err(CaError::BadRequest(format!(
            "{what}: at most {MAX_TAGS}; keys of letters, digits, '-', '.', '_' (at most {MAX_TAG_KEY}), \
             values printable (at most {MAX_TEXT})"
        )));
    }
    Ok(())
}

/// A node record an administrator sends.
pub fn node_record(node: &NodeRecord) -> Result<(), CaError> {
    node_name(&node.name)?;
    addresses(&node.addresses)?;
    for (what, value) in [("agent", &node.agent), ("partition", &node.partition)] {
        if let Some(v) = value
            && !tag_key(v)
        {
            return Err(CaError::BadRequest(format!("{what}: letters, digits, '-', '.', '_' (at most {MAX_TAG_KEY})")));
        }
    }
    for value in [&node.kind, &node.vendor, &node.os].into_iter().flatten() {
        if !text(value) {
            return Err(CaError::BadRequest(format!("type, vendor and os: printable text (at most {MAX_TEXT})")));
        }
    }
    ssh_port(node.ssh_port)?;
    map("tags", &node.tags)?;
    map("metadata", &node.metadata)
}

pub fn ssh_port(port: Option<u16>) -> Result<(), CaError> {
    match port {
        Some(0) => Err(CaError::BadRequest("ssh_port: 1 to 65535".into())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_refuse_control_characters() {
        assert!(identifier("user", "alice").is_ok());
        assert!(identifier("user", "ali\0ce").is_err());
        assert!(identifier("user", "a\nb").is_err());
        assert!(identifier("user", "").is_err());
        assert!(identifier("user", &"a".repeat(MAX_IDENTIFIER + 1)).is_err());
    }

    #[test]
    fn node_names_follow_the_enrollment_alphabet() {
        for good in ["pve01", "pve-01.lab", "a_b", "1node"] {
            assert!(node_name(good).is_ok(), "{good}");
        }
        for bad in ["..", ".", ".hidden", "", "a/b", "a b", "a\0", "pve;rm", &"a".repeat(254)] {
            assert!(node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses_are_hosts_or_ips_with_optional_port() {
        for good in ["10.0.0.5", "10.0.0.5:2222", "2001:db8::5", "[2001:db8::5]:22", "pve01", "pve01.example:22"] {
            assert!(address(good), "{good}");
        }
        let hosts: Vec<String> =
            ["10.0.0.5:2222", "2001:DB8::5", "[2001:db8::5]:22", "PVE01.example:22"].map(address_host).into();
        assert_eq!(hosts, ["10.0.0.5", "2001:db8::5", "2001:db8::5", "pve01.example"]);
        for bad in [
            "127.0.0.1:22; rm -rf /",
            "",
            "host:0",
            "host:99999",
            "a b",
            "-lead.example",
            "host..example",
            "$(reboot)",
            &"a".repeat(3000),
        ] {
            assert!(!address(bad), "{bad:?}");
        }
    }

    #[test]
    fn records_with_hostile_tags_are_refused() {
        let mut node = NodeRecord { name: "pve01".into(), ..NodeRecord::default() };
        assert!(node_record(&node).is_ok());
        node.tags.insert("k".repeat(300), "v".into());
        assert!(node_record(&node).is_err());
        node.tags.clear();
        node.tags.insert("a\"b".into(), "v".into());
        assert!(node_record(&node).is_err());
        node.tags.clear();
        node.tags.insert("cluster".into(), "prod\0".into());
        assert!(node_record(&node).is_err());
        node.tags.clear();
        node.tags.insert("cluster".into(), "prod".into());
        assert!(node_record(&node).is_ok());
    }
}
