//! Sign-ins in progress, kept in memory and keyed by the SHA-256 of the handle the
//! client holds (the device-flow handle, the browser flow's `state`). Entries are single
//! use (taken out when used), expire, and are bounded in number so a flood of started
//! sign-ins cannot exhaust memory. They are per replica: with several CA replicas a
//! load balancer must keep a client on one replica for the minutes of a sign-in.

use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::Mutex;

/// At most this many sign-ins of each kind in progress per replica.
const MAX_PENDING: usize = 10_000;

#[derive(Debug)]
pub struct PendingDevice {
    pub device_code: SecretString,
    pub expires_at: u64,
    pub interval: u64,
    /// When the IdP was last asked for this sign-in: a poll sooner than `interval` after
    /// it is answered `slow_down` by the CA itself, so a client ignoring the interval
    /// costs the IdP nothing.
    pub last_poll: Option<u64>,
}

#[derive(Debug)]
pub struct PendingLogin {
    pub nonce: SecretString,
    pub pkce_verifier: SecretString,
    /// SHA-256 of the browser-binding cookie set when the sign-in started.
    pub binding_hash: String,
    pub expires_at: u64,
}

#[derive(Default)]
pub(crate) struct Pending {
    devices: Mutex<HashMap<String, PendingDevice>>,
    logins: Mutex<HashMap<String, PendingLogin>>,
}

trait Expiring {
    fn expires_at(&self) -> u64;
}

impl Expiring for PendingDevice {
    fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

impl Expiring for PendingLogin {
    fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

/// Inserts after sweeping expired entries; `false` when still full.
fn insert<T: Expiring>(map: &Mutex<HashMap<String, T>>, key: String, value: T, now: u64) -> bool {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= MAX_PENDING {
        map.retain(|_, v| v.expires_at() > now);
    }
    if map.len() >= MAX_PENDING {
        return false;
    }
    map.insert(key, value);
    true
}

impl Pending {
    pub fn insert_device(&self, handle_hash: String, device: PendingDevice, now: u64) -> bool {
        insert(&self.devices, handle_hash, device, now)
    }

    /// The device code of a sign-in: `Err(true)` when it expired (then forgotten),
    /// `Err(false)` when unknown.
    pub fn device_code(&self, handle_hash: &str, now: u64) -> Result<SecretString, bool> {
        let mut map = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(handle_hash) {
            Some(d) if d.expires_at > now => Ok(d.device_code.clone()),
            Some(_) => {
                map.remove(handle_hash);
                Err(true)
            }
            None => Err(false),
        }
    }

    /// Runs `f` on a live device sign-in; `None` if unknown or expired (then forgotten).
    pub fn with_device<R>(&self, handle_hash: &str, now: u64, f: impl FnOnce(&mut PendingDevice) -> R) -> Option<R> {
        let mut map = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(handle_hash) {
            Some(d) if d.expires_at > now => Some(f(d)),
            Some(_) => {
                map.remove(handle_hash);
                None
            }
            None => None,
        }
    }

    pub fn remove_device(&self, handle_hash: &str) {
        self.devices.lock().unwrap_or_else(|e| e.into_inner()).remove(handle_hash);
    }

    pub fn insert_login(&self, state_hash: String, login: PendingLogin, now: u64) -> bool {
        insert(&self.logins, state_hash, login, now)
    }

    /// Takes a browser sign-in out: a `state` works once, replays find nothing.
    pub fn take_login(&self, state_hash: &str, now: u64) -> Option<PendingLogin> {
        let login = self.logins.lock().unwrap_or_else(|e| e.into_inner()).remove(state_hash)?;
        (login.expires_at > now).then_some(login)
    }
}
