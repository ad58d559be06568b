//! Issued certificates, revoked keys and the KRL version counter.

use super::{
    Result, Store, StoreError, found_among, json_list, parse_list, serial_from_db, serial_to_db, statement_chunks, ts,
    ts_from, values_statement,
};
use sqlx::{AnyConnection, Row};

#[derive(Debug, Clone)]
pub struct CertRow {
    pub serial: u64,
    pub ca_fingerprint: String,
    pub key_fingerprint: String,
    pub username: String,
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_after: u64,
    pub valid_before: u64,
    pub issued_at: u64,
    pub revoked_at: Option<u64>,
    /// The identity's groups at issuance (empty for node and service certificates).
    pub groups: Vec<String>,
    /// `portcullis_sshcert::certificate_digest` of the issued certificate (`None` for
    /// rows from before it was recorded).
    pub digest: Option<String>,
    /// A user certificate: when its user proved who they are for the API session it was
    /// issued under (step-up checks it; `None`: not known — a row from before step-up, or
    /// written by a replica older than it).
    pub authenticated_at: Option<u64>,
    /// A user certificate issued under an identity provider's sign-in that stated no
    /// groups: `groups` is empty for not knowing (see `SessionRow::groups_unknown`).
    pub groups_unknown: bool,
}

impl CertRow {
    /// When the user behind this certificate last proved who they are; not known is
    /// never (0): a step-up rule then asks for a new sign-in, rather than taking the
    /// issue time — a certificate issued a minute ago from a week-old sign-in is not a
    /// fresh one.
    pub fn authenticated_at(&self) -> u64 {
        self.authenticated_at.unwrap_or(0)
    }
}

macro_rules! cert_columns {
    () => {
        "serial, ca_fingerprint, key_fingerprint, username, key_id, principals_json, \
         valid_after, valid_before, issued_at, revoked_at, groups_json, cert_digest, authenticated_at, \
         groups_unknown"
    };
}

fn cert_from(row: &sqlx::any::AnyRow) -> Result<CertRow> {
    Ok(CertRow {
        serial: serial_from_db(row.try_get("serial")?),
        ca_fingerprint: row.try_get("ca_fingerprint")?,
        key_fingerprint: row.try_get("key_fingerprint")?,
        username: row.try_get("username")?,
        key_id: row.try_get("key_id")?,
        principals: parse_list(&row.try_get::<String, _>("principals_json")?)?,
        valid_after: ts_from(row.try_get("valid_after")?),
        valid_before: ts_from(row.try_get("valid_before")?),
        issued_at: ts_from(row.try_get("issued_at")?),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(ts_from),
        groups: parse_list(&row.try_get::<String, _>("groups_json")?)?,
        digest: row.try_get("cert_digest")?,
        authenticated_at: row.try_get::<Option<i64>, _>("authenticated_at")?.map(ts_from),
        groups_unknown: row.try_get::<i64, _>("groups_unknown")? != 0,
    })
}

impl Store {
    /// The newest `limit` certificates (of `username`, if given), newest first.
    pub async fn certificates(&self, username: Option<&str>, limit: u32) -> Result<Vec<CertRow>> {
        let limit = i64::from(limit);
        let rows = match username {
            Some(u) => {
                sqlx::query(concat!(
                    "SELECT ",
                    cert_columns!(),
                    " FROM certificates WHERE username = $1 ORDER BY issued_at DESC, serial LIMIT $2"
                ))
                .bind(u)
                .bind(limit)
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    cert_columns!(),
                    " FROM certificates ORDER BY issued_at DESC, serial LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(self.pool())
                .await?
            }
        };
        rows.iter().map(cert_from).collect()
    }

    pub async fn certificate(&self, serial: u64) -> Result<Option<CertRow>> {
        let row = sqlx::query(concat!("SELECT ", cert_columns!(), " FROM certificates WHERE serial = $1"))
            .bind(serial_to_db(serial))
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(cert_from).transpose()
    }

    /// Revoked certificates that have not expired yet: what the KRL must list.
    pub async fn revoked_unexpired(&self, now: u64) -> Result<Vec<(u64, String)>> {
        let rows = sqlx::query(
            "SELECT serial, ca_fingerprint FROM certificates \
             WHERE revoked_at IS NOT NULL AND valid_before > $1 ORDER BY serial",
        )
        .bind(ts(now))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok((serial_from_db(r.try_get("serial")?), r.try_get("ca_fingerprint")?))).collect()
    }

    /// Public keys revoked outright, as OpenSSH public key lines.
    pub async fn revoked_keys(&self) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT public_key FROM revoked_keys ORDER BY fingerprint").fetch_all(self.pool()).await?;
        rows.iter().map(|r| Ok(r.try_get("public_key")?)).collect()
    }

    pub async fn is_key_revoked(&self, fingerprint: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 AS one FROM revoked_keys WHERE fingerprint = $1")
            .bind(fingerprint)
            .fetch_optional(self.pool())
            .await?
            .is_some())
    }

    /// `(version, time of the last change)` of the revocation set.
    pub async fn krl_version(&self) -> Result<(u64, u64)> {
        let row = sqlx::query("SELECT version, updated_at FROM krl_state WHERE id = 1").fetch_one(self.pool()).await?;
        Ok((ts_from(row.try_get("version")?), ts_from(row.try_get("updated_at")?)))
    }
}

/// Stores one certificate signed outside the issuance writer (onward session, host,
/// discovery, service and enrollment-check certificates), refusing it when its signing
/// key is no longer in force: this replica signed with a keyring up to a housekeeping
/// tick old, and another replica may have retired or revoked that key since. Nodes
/// would refuse such a certificate; handing it out would also leave a certificate the
/// KRL never names.
pub async fn insert_cert(conn: &mut AnyConnection, c: &CertRow) -> Result<()> {
    if signers_in_force(conn, &[c.ca_fingerprint.as_str()]).await?.is_empty() {
        return Err(StoreError::SignerWithdrawn);
    }
    insert_certs(conn, &[c]).await
}

/// Stores certificates with one multi-row statement per chunk (the issuance writer's
/// batches: one round trip instead of one per certificate).
pub async fn insert_certs(conn: &mut AnyConnection, rows: &[&CertRow]) -> Result<()> {
    const HEAD: &str = "INSERT INTO certificates (serial, ca_fingerprint, key_fingerprint, username, key_id, \
                        principals_json, valid_after, valid_before, issued_at, groups_json, cert_digest, \
                        authenticated_at, groups_unknown)";
    for (start, len) in statement_chunks(rows.len()) {
        let statement = values_statement(HEAD, 13, len);
        let mut query = sqlx::query(statement);
        for c in rows.iter().skip(start).take(len) {
            query = query
                .bind(serial_to_db(c.serial))
                .bind(c.ca_fingerprint.clone())
                .bind(c.key_fingerprint.clone())
                .bind(c.username.clone())
                .bind(c.key_id.clone())
                .bind(json_list(&c.principals))
                .bind(ts(c.valid_after))
                .bind(ts(c.valid_before))
                .bind(ts(c.issued_at))
                .bind(json_list(&c.groups))
                .bind(c.digest.clone())
                .bind(c.authenticated_at.map(ts))
                .bind(i64::from(c.groups_unknown));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Which of `fingerprints` are revoked keys, in the transaction's view (one statement per
/// chunk of the issuance writer's batch).
pub async fn revoked_among(
    conn: &mut AnyConnection,
    fingerprints: &[&str],
) -> Result<std::collections::HashSet<String>> {
    found_among(conn, "SELECT fingerprint FROM revoked_keys WHERE fingerprint IN", "", "fingerprint", fingerprints)
        .await
}

/// Which of the CA keys `fingerprints` nodes still trust: active or previous, and not
/// revoked. Each replica signs with the keyring it last read (every few seconds), so
/// another replica may have retired or revoked a key since.
pub async fn signers_in_force(
    conn: &mut AnyConnection,
    fingerprints: &[&str],
) -> Result<std::collections::HashSet<String>> {
    found_among(
        conn,
        "SELECT fingerprint FROM ca_keys WHERE state IN ('active', 'previous') AND NOT EXISTS \
         (SELECT 1 FROM revoked_keys r WHERE r.fingerprint = ca_keys.fingerprint) AND fingerprint IN",
        "",
        "fingerprint",
        fingerprints,
    )
    .await
}

/// What a revocation selects. Already-expired certificates need no KRL entry.
pub enum RevokeTarget<'a> {
    Serial(u64),
    KeyFingerprint(&'a str),
    User(&'a str),
}

pub async fn revoke_certs(conn: &mut AnyConnection, target: &RevokeTarget<'_>, now: u64) -> Result<u64> {
    // Static statements only: sqlx refuses SQL assembled at run time, and rightly so.
    let query = match target {
        RevokeTarget::Serial(s) => sqlx::query(
            "UPDATE certificates SET revoked_at = $1 WHERE serial = $2 AND revoked_at IS NULL AND valid_before > $1",
        )
        .bind(ts(now))
        .bind(serial_to_db(*s)),
        RevokeTarget::KeyFingerprint(f) => sqlx::query(
            "UPDATE certificates SET revoked_at = $1 \
             WHERE key_fingerprint = $2 AND revoked_at IS NULL AND valid_before > $1",
        )
        .bind(ts(now))
        .bind(*f),
        RevokeTarget::User(u) => sqlx::query(
            "UPDATE certificates SET revoked_at = $1 WHERE username = $2 AND revoked_at IS NULL AND valid_before > $1",
        )
        .bind(ts(now))
        .bind(*u),
    };
    Ok(query.execute(&mut *conn).await?.rows_affected())
}

pub async fn insert_revoked_key(
    conn: &mut AnyConnection,
    fingerprint: &str,
    public_key: &str,
    now: u64,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO revoked_keys (fingerprint, public_key, revoked_at) VALUES ($1, $2, $3) \
         ON CONFLICT (fingerprint) DO NOTHING",
    )
    .bind(fingerprint)
    .bind(public_key)
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The KRL's next version: one more, and at least the time now. So a CA restored from an
/// older backup publishes, at its first revocation, a version above every one it had
/// published before — nodes and bastions keep a KRL whose version is higher than the
/// one they are sent (it has revocations the restored CA lost).
pub async fn bump_krl_version(conn: &mut AnyConnection, now: u64) -> Result<u64> {
    let row = sqlx::query(
        "UPDATE krl_state SET version = CASE WHEN version + 1 > $1 THEN version + 1 ELSE $1 END, updated_at = $1 \
         WHERE id = 1 RETURNING version",
    )
    .bind(ts(now))
    .fetch_one(&mut *conn)
    .await?;
    Ok(ts_from(row.try_get("version")?))
}
