//! OpenID Connect sign-ins in progress (migration 0013), shared by every replica so a
//! callback or a poll may reach any of them. Rows hold no secret: see the migration.
//! Each is single use or rate-limited by one conditional statement, so two replicas
//! racing on one sign-in cannot both complete it.

use super::{Result, Store, ts, ts_from};
use sqlx::Row;

const LOGIN: &str = "login";
const DEVICE: &str = "device";

/// A sign-in being started.
#[derive(Debug, Clone)]
pub struct NewPending<'a> {
    /// SHA-256 of the client's handle (`state`, or the device flow's `pcd_…` handle).
    pub key_hash: &'a str,
    /// The device flow's poll interval; `None` for a browser sign-in.
    pub device_interval: Option<u64>,
    /// SHA-256 of the browser's binding cookie (empty for the device flow).
    pub binding_hash: &'a str,
    /// Where it was started from ([`crate::ratelimit::source_key`]).
    pub source: &'a str,
    pub expires_at: u64,
}

/// How many sign-ins may be in progress: from one source, and in all (every replica).
#[derive(Debug, Clone, Copy)]
pub struct PendingCaps {
    pub per_source: i64,
    pub total: i64,
}

/// What [`Store::insert_oidc_pending`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingAdmission {
    Stored,
    /// The source holds its share already.
    SourceFull,
    /// The table is full and no source holds more than the asking one would.
    Full,
}

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
    /// Records a sign-in in progress, within `caps`. A source at its share is refused.
    /// A full table makes room by forgetting the oldest sign-in of the source holding the
    /// most, as long as that source holds more than the asking one would: a flood from a
    /// few sources displaces only its own sign-ins, and filling the table against
    /// everyone takes as many sources as the table has rows. Expired sign-ins do not
    /// count (the housekeeping timer deletes them). On PostgreSQL two replicas admitting
    /// at the same instant may each see room for one, so the caps are soft by a row or
    /// two.
    pub async fn insert_oidc_pending(
        &self,
        pending: &NewPending<'_>,
        now: u64,
        caps: PendingCaps,
    ) -> Result<PendingAdmission> {
        let mut tx = self.begin().await?;
        let own: i64 = sqlx::query("SELECT COUNT(*) AS n FROM oidc_pending WHERE expires_at > $1 AND source = $2")
            .bind(ts(now))
            .bind(pending.source)
            .fetch_one(tx.conn())
            .await?
            .try_get("n")?;
        if own >= caps.per_source {
            return Ok(PendingAdmission::SourceFull);
        }
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM oidc_pending WHERE expires_at > $1")
            .bind(ts(now))
            .fetch_one(tx.conn())
            .await?
            .try_get("n")?;
        if total >= caps.total {
            let heaviest = sqlx::query(
                "SELECT source, COUNT(*) AS n FROM oidc_pending WHERE expires_at > $1 \
                 GROUP BY source ORDER BY n DESC, source LIMIT 1",
            )
            .bind(ts(now))
            .fetch_optional(tx.conn())
            .await?;
            let Some(heaviest) = heaviest else { return Ok(PendingAdmission::Full) };
            if heaviest.try_get::<i64, _>("n")? <= own + 1 {
                return Ok(PendingAdmission::Full);
            }
            sqlx::query(
                "DELETE FROM oidc_pending WHERE key_hash = (SELECT key_hash FROM oidc_pending \
                 WHERE source = $1 AND expires_at > $2 ORDER BY expires_at, key_hash LIMIT 1)",
            )
            .bind(heaviest.try_get::<String, _>("source")?)
            .bind(ts(now))
            .execute(tx.conn())
            .await?;
        }
        sqlx::query(
            "INSERT INTO oidc_pending (key_hash, kind, binding_hash, poll_interval, last_poll, expires_at, source) \
             VALUES ($1, $2, $3, $4, NULL, $5, $6)",
        )
        .bind(pending.key_hash)
        .bind(if pending.device_interval.is_some() { DEVICE } else { LOGIN })
        .bind(pending.binding_hash)
        .bind(ts(pending.device_interval.unwrap_or(0)))
        .bind(ts(pending.expires_at))
        .bind(pending.source)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(PendingAdmission::Stored)
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
