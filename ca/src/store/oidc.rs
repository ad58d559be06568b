//! OpenID Connect sign-ins in progress (migration 0013), shared by every replica so a
//! callback or a poll may reach any of them. Rows hold no secret: see the migration.
//! Each is single use or rate-limited by one conditional statement, so two replicas
//! racing on one sign-in cannot both complete it.

use super::{Result, Store, ts, ts_from};
use sqlx::Row;

const LOGIN: &str = "login";
const DEVICE: &str = "device";

/// A browser sign-in, as taken out at its callback.
#[derive(Debug, Clone)]
pub struct PendingLogin {
    /// SHA-256 of the binding cookie set when it started.
    pub binding_hash: String,
    pub expires_at: u64,
}

/// Whether a device sign-in may ask the IdP now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollTurn {
    /// Unknown or finished.
    Unknown,
    /// Expired (now forgotten).
    Expired,
    /// Asked less than `interval` seconds ago.
    TooSoon { interval: u64 },
    /// Recorded as polled now.
    Granted { interval: u64 },
}

impl Store {
    /// Records a sign-in in progress unless `max` are live already: `false` when full,
    /// so a flood of started sign-ins is bounded (expired ones do not count; the
    /// housekeeping timer deletes them).
    pub async fn insert_oidc_pending(
        &self,
        key_hash: &str,
        device_interval: Option<u64>,
        binding_hash: &str,
        expires_at: u64,
        now: u64,
        max: i64,
    ) -> Result<bool> {
        let live: i64 = sqlx::query("SELECT COUNT(*) AS n FROM oidc_pending WHERE expires_at > $1")
            .bind(ts(now))
            .fetch_one(self.pool())
            .await?
            .try_get("n")?;
        if live >= max {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO oidc_pending (key_hash, kind, binding_hash, poll_interval, last_poll, expires_at) \
             VALUES ($1, $2, $3, $4, NULL, $5)",
        )
        .bind(key_hash)
        .bind(if device_interval.is_some() { DEVICE } else { LOGIN })
        .bind(binding_hash)
        .bind(ts(device_interval.unwrap_or(0)))
        .bind(ts(expires_at))
        .execute(self.pool())
        .await?;
        Ok(true)
    }

    /// Takes a browser sign-in out (one `DELETE … RETURNING`: a `state` works once, on
    /// whichever replica sees it first); `None` when unknown, used or expired.
    pub async fn take_oidc_login(&self, key_hash: &str, now: u64) -> Result<Option<PendingLogin>> {
        let row = sqlx::query(
            "DELETE FROM oidc_pending WHERE key_hash = $1 AND kind = $2 RETURNING binding_hash, expires_at",
        )
        .bind(key_hash)
        .bind(LOGIN)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let login = PendingLogin {
            binding_hash: row.try_get("binding_hash")?,
            expires_at: ts_from(row.try_get("expires_at")?),
        };
        Ok((login.expires_at > now).then_some(login))
    }

    /// A device sign-in's turn to ask the IdP: granted (and recorded) unless it was
    /// asked less than its interval ago — one conditional `UPDATE`, so polls spread over
    /// replicas still reach the IdP at most once per interval.
    pub async fn oidc_poll_turn(&self, key_hash: &str, now: u64) -> Result<PollTurn> {
        let granted = sqlx::query(
            "UPDATE oidc_pending SET last_poll = $1 WHERE key_hash = $2 AND kind = $3 AND expires_at > $1 \
             AND (last_poll IS NULL OR last_poll + poll_interval <= $1) RETURNING poll_interval",
        )
        .bind(ts(now))
        .bind(key_hash)
        .bind(DEVICE)
        .fetch_optional(self.pool())
        .await?;
        if let Some(row) = granted {
            return Ok(PollTurn::Granted { interval: ts_from(row.try_get("poll_interval")?) });
        }
        let row = sqlx::query("SELECT poll_interval, expires_at FROM oidc_pending WHERE key_hash = $1 AND kind = $2")
            .bind(key_hash)
            .bind(DEVICE)
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else { return Ok(PollTurn::Unknown) };
        if ts_from(row.try_get("expires_at")?) <= now {
            self.remove_oidc_pending(key_hash).await?;
            return Ok(PollTurn::Expired);
        }
        Ok(PollTurn::TooSoon { interval: ts_from(row.try_get("poll_interval")?) })
    }

    /// The IdP said `slow_down`: five more seconds between polls (at most 60); the new
    /// interval, or `None` when the sign-in is gone.
    pub async fn slow_oidc_device(&self, key_hash: &str) -> Result<Option<u64>> {
        let row = sqlx::query(
            "UPDATE oidc_pending SET poll_interval = CASE WHEN poll_interval + 5 > 60 THEN 60 ELSE poll_interval + 5 END \
             WHERE key_hash = $1 AND kind = $2 RETURNING poll_interval",
        )
        .bind(key_hash)
        .bind(DEVICE)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| Ok(ts_from(r.try_get("poll_interval")?))).transpose()
    }

    pub async fn remove_oidc_pending(&self, key_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM oidc_pending WHERE key_hash = $1").bind(key_hash).execute(self.pool()).await?;
        Ok(())
    }

    /// Forgets sign-ins that expired before `now`.
    pub async fn purge_oidc_pending(&self, now: u64) -> Result<u64> {
        let done =
            sqlx::query("DELETE FROM oidc_pending WHERE expires_at <= $1").bind(ts(now)).execute(self.pool()).await?;
        Ok(done.rows_affected())
    }
}
