//! The SSH user name a client asks for, and which certificate principals admit it.
//!
//! Terminated mode uses `LOGIN%DEVICE` (e.g. `root%pve01`): the certificate must carry a
//! **scoped principal for that login** — `pc_<12 hex>_<login>`, the form the CA issues
//! for every role granting the login (see ARCHITECTURE.md, "Scoped principals").
//! Jump mode (`ssh -J alice@bastion …`) uses a plain name, which is only a label: the
//! inner SSH authenticates end to end, so any scoped principal admits the connection.
//! Plain login names are never issued by the CA and are never accepted. Which role, and
//! whether it covers the device, is decided by the CA for each session.

use portcullis_proto::bastion::LOGIN_DEVICE_SEPARATOR as SEPARATOR;

/// `LOGIN` or `LOGIN%DEVICE`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedLogin {
    login: String,
    device: Option<String>,
}

const MAX_NAME: usize = 64;

pub(crate) fn well_formed(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl RequestedLogin {
    /// `None` when the user name is not `LOGIN` or `LOGIN%DEVICE` with well-formed parts.
    pub fn parse(user: &str) -> Option<Self> {
        let (login, device) = match user.split_once(SEPARATOR) {
            Some((login, device)) => (login, Some(device)),
            None => (user, None),
        };
        if !well_formed(login) || device.is_some_and(|d| !well_formed(d)) {
            return None;
        }
        Some(Self { login: login.to_owned(), device: device.map(str::to_owned) })
    }

    pub fn login(&self) -> &str {
        &self.login
    }

    pub fn device(&self) -> Option<&str> {
        self.device.as_deref()
    }
}

/// The login of a scoped principal `pc_<12 lowercase hex>_<login>`.
fn scoped_login(principal: &str) -> Option<&str> {
    let rest = principal.strip_prefix("pc_")?;
    let (hash, tail) = rest.split_at_checked(12)?;
    let login = tail.strip_prefix('_')?;
    (hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) && well_formed(login)).then_some(login)
}

/// The certificate principals that admit the request: scoped principals for the login
/// (terminated mode), or any scoped principal (jump mode, no device named). Passed to
/// `check_user_certificate` as the acceptable set.
pub fn acceptable_principals<'a>(request: &RequestedLogin, cert_principals: &'a [String]) -> Vec<&'a str> {
    cert_principals
        .iter()
        .map(String::as_str)
        .filter(|p| scoped_login(p).is_some_and(|login| request.device().is_none() || login == request.login()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_login_and_device() {
        let r = RequestedLogin::parse("root%pve01").unwrap();
        assert_eq!((r.login(), r.device()), ("root", Some("pve01")));
        let r = RequestedLogin::parse("alice").unwrap();
        assert_eq!((r.login(), r.device()), ("alice", None));
        for bad in ["", "%pve", "root%", "root%a%b", "-oProxy", "ro ot", "root\n", &"a".repeat(65)] {
            assert_eq!(RequestedLogin::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_scoped_principals_for_the_login_are_acceptable() {
        let root = RequestedLogin::parse("root%pve01").unwrap();
        let principals: Vec<String> = [
            "pc_0123456789ab_root",
            "pc_0123456789ab_rooty",
            "pc_0123456789ab_admin",
            "root",
            "pc_0123456789AB_root",
            "pc_012345_root",
            "xc_0123456789ab_root",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(acceptable_principals(&root, &principals), vec!["pc_0123456789ab_root"]);
        let admin = RequestedLogin::parse("admin%pve01").unwrap();
        assert_eq!(acceptable_principals(&admin, &principals), vec!["pc_0123456789ab_admin"]);
        // Jump mode: the name is a label; every scoped principal admits, nothing else.
        let jump = RequestedLogin::parse("alice").unwrap();
        assert_eq!(
            acceptable_principals(&jump, &principals),
            vec!["pc_0123456789ab_root", "pc_0123456789ab_rooty", "pc_0123456789ab_admin"]
        );
    }
}
