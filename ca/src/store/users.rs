//! Local users and API sessions.

use super::{Result, Store, json_list, parse_list, ts, ts_from};
use sqlx::{AnyConnection, Row};

#[derive(Debug, Clone)]
pub struct UserRow {
    pub username: String,
    /// argon2id PHC string; `None` for a user that cannot log in with a password.
    pub password_hash: Option<String>,
    pub groups: Vec<String>,
    pub disabled: bool,
    /// The password opens no session until it is replaced (a one-time password).
    pub must_change_password: bool,
}

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub username: String,
    pub source: String,
    pub groups: Vec<String>,
    pub expires_at: u64,
    /// When the user proved who they are for this session (step-up checks it); 0 when
    /// not known (a session from before step-up): never fresh.
    pub authenticated_at: u64,
    /// The identity provider stated no groups: `groups` is empty for not knowing.
    pub groups_unknown: bool,
}

fn user_from(row: &sqlx::any::AnyRow) -> Result<UserRow> {
    Ok(UserRow {
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        groups: parse_list(&row.try_get::<String, _>("groups_json")?)?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        must_change_password: row.try_get::<i64, _>("must_change_password")? != 0,
    })
}

impl Store {
    /// Every group `username` has had an API session with (the broadest it has been
    /// seen with): what a directory or IdP account is judged by when no session is live.
    pub async fn session_groups(&self, username: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT groups_json FROM sessions WHERE username = $1")
            .bind(username)
            .fetch_all(self.pool())
            .await?;
        let mut groups = std::collections::BTreeSet::new();
        for row in rows {
            groups.extend(super::parse_list(&row.try_get::<String, _>("groups_json")?)?);
        }
        Ok(groups.into_iter().collect())
    }

    /// The subject holding an account name, if any (see [`claim_account`]).
    pub async fn account_subject(&self, account: &str) -> Result<Option<String>> {
        holder(self.pool(), account).await
    }

    pub async fn user(&self, username: &str) -> Result<Option<UserRow>> {
        let row = sqlx::query("SELECT username, password_hash, groups_json, disabled, must_change_password FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    pub async fn users(&self) -> Result<Vec<UserRow>> {
        let rows = sqlx::query(
            "SELECT username, password_hash, groups_json, disabled, must_change_password FROM users ORDER BY username",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(user_from).collect()
    }

    pub async fn user_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users").fetch_one(self.pool()).await?.try_get("n")?)
    }

    /// Looks a session up by token hash, joined with the local user row (if any) so one
    /// query answers "is this caller still allowed" at every request.
    pub async fn session(&self, token_hash: &str, now: u64) -> Result<Option<(SessionRow, Option<UserRow>)>> {
        let row = sqlx::query(
            "SELECT s.username AS username, s.source AS source, s.groups_json AS groups_json, \
                    s.expires_at AS expires_at, COALESCE(s.authenticated_at, 0) AS authenticated_at, \
                    s.groups_unknown AS groups_unknown, \
                    u.password_hash AS password_hash, \
                    u.groups_json AS user_groups, u.disabled AS disabled, u.username AS user_name, \
                    u.must_change_password AS must_change_password \
             FROM sessions s LEFT JOIN users u ON u.username = s.username \
             WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2",
        )
        .bind(token_hash)
        .bind(ts(now))
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let session = SessionRow {
            username: row.try_get("username")?,
            source: row.try_get("source")?,
            groups: parse_list(&row.try_get::<String, _>("groups_json")?)?,
            expires_at: ts_from(row.try_get("expires_at")?),
            authenticated_at: ts_from(row.try_get("authenticated_at")?),
            groups_unknown: row.try_get::<i64, _>("groups_unknown")? != 0,
        };
        let user = match row.try_get::<Option<String>, _>("user_name")? {
            Some(username) => Some(UserRow {
                username,
                password_hash: row.try_get("password_hash")?,
                groups: parse_list(&row.try_get::<String, _>("user_groups")?)?,
                disabled: row.try_get::<i64, _>("disabled")? != 0,
                must_change_password: row.try_get::<i64, _>("must_change_password")? != 0,
            }),
            None => None,
        };
        Ok(Some((session, user)))
    }
}

pub async fn insert_user(
    conn: &mut AnyConnection,
    username: &str,
    password: Option<NewPassword<'_>>,
    groups: &[String],
    now: u64,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO users (username, password_hash, groups_json, disabled, must_change_password, created_at, \
         updated_at) VALUES ($1, $2, $3, 0, $4, $5, $5) ON CONFLICT (username) DO NOTHING",
    )
    .bind(username)
    .bind(password.map(|p| p.hash))
    .bind(json_list(groups))
    .bind(i64::from(password.is_some_and(|p| p.one_time)))
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Replaces a user's groups; the groups it had (for the audit record), `None` when there
/// is no such user.
pub async fn set_user_groups(
    conn: &mut AnyConnection,
    username: &str,
    groups: &[String],
    now: u64,
) -> Result<Option<Vec<String>>> {
    let Some(row) = sqlx::query("SELECT groups_json FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let old = parse_list(&row.try_get::<String, _>("groups_json")?)?;
    sqlx::query("UPDATE users SET groups_json = $1, updated_at = $2 WHERE username = $3")
        .bind(json_list(groups))
        .bind(ts(now))
        .bind(username)
        .execute(&mut *conn)
        .await?;
    Ok(Some(old))
}

pub async fn set_user_disabled(conn: &mut AnyConnection, username: &str, disabled: bool, now: u64) -> Result<bool> {
    let done = sqlx::query("UPDATE users SET disabled = $1, updated_at = $2 WHERE username = $3")
        .bind(i64::from(disabled))
        .bind(ts(now))
        .bind(username)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A password hash as stored, and whether it opens no session until replaced.
#[derive(Debug, Clone, Copy)]
pub struct NewPassword<'a> {
    pub hash: &'a str,
    pub one_time: bool,
}

pub async fn set_user_password(
    conn: &mut AnyConnection,
    username: &str,
    password: NewPassword<'_>,
    now: u64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE users SET password_hash = $1, must_change_password = $2, updated_at = $3 WHERE username = $4",
    )
    .bind(password.hash)
    .bind(i64::from(password.one_time))
    .bind(ts(now))
    .bind(username)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A user replacing their own password: only if it is still the one they proved
/// (`old_hash`), so two sign-ins racing with the same one-time password change it once.
pub async fn replace_own_password(
    conn: &mut AnyConnection,
    username: &str,
    old_hash: &str,
    new_hash: &str,
    now: u64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE users SET password_hash = $1, must_change_password = 0, updated_at = $2 \
         WHERE username = $3 AND password_hash = $4",
    )
    .bind(new_hash)
    .bind(ts(now))
    .bind(username)
    .bind(old_hash)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn insert_session(conn: &mut AnyConnection, token_hash: &str, session: &SessionRow, now: u64) -> Result<()> {
    sqlx::query(
        "INSERT INTO sessions (token_hash, username, source, groups_json, created_at, expires_at, authenticated_at, \
         groups_unknown) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(token_hash)
    .bind(&session.username)
    .bind(&session.source)
    .bind(json_list(&session.groups))
    .bind(ts(now))
    .bind(ts(session.expires_at))
    .bind(ts(session.authenticated_at))
    .bind(i64::from(session.groups_unknown))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn revoke_session(conn: &mut AnyConnection, token_hash: &str, now: u64) -> Result<bool> {
    let done = sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL")
        .bind(ts(now))
        .bind(token_hash)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Which of the API sessions named by `token_hashes` are not revoked, seen inside a write
/// transaction, so that what the transaction stores for them (an issued certificate) and
/// their revocation are ordered. SQLite: write transactions run one at a time. PostgreSQL
/// (READ COMMITTED): `FOR SHARE` locks each live session's row until commit, so a
/// revocation either committed first (its row is re-read, revoked, and left out) or waits
/// for this commit, and then its certificate revocation — a later statement, so a later
/// snapshot — sees what this transaction stored.
pub async fn live_sessions_among(
    tx: &mut super::WriteTx<'_>,
    token_hashes: &[&str],
) -> Result<std::collections::HashSet<String>> {
    let tail = match tx.backend() {
        super::Backend::Sqlite => " AND revoked_at IS NULL",
        super::Backend::Postgres => " AND revoked_at IS NULL FOR SHARE",
    };
    let select = "SELECT token_hash FROM sessions WHERE token_hash IN";
    super::found_among(tx.conn(), select, tail, "token_hash", token_hashes).await
}

pub async fn revoke_user_sessions(conn: &mut AnyConnection, username: &str, now: u64) -> Result<u64> {
    let done = sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE username = $2 AND revoked_at IS NULL")
        .bind(ts(now))
        .bind(username)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

/// The subject holding `account`, read in a transaction or from the pool.
async fn holder<'e>(executor: impl sqlx::Executor<'e, Database = sqlx::Any>, account: &str) -> Result<Option<String>> {
    let row =
        sqlx::query("SELECT subject FROM accounts WHERE account = $1").bind(account).fetch_optional(executor).await?;
    Ok(row.map(|r| r.try_get("subject")).transpose()?)
}

/// The account names `subject` (of `source`) holds.
pub async fn accounts_of(conn: &mut AnyConnection, source: &str, subject: &str) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT account FROM accounts WHERE source = $1 AND subject = $2 ORDER BY account")
        .bind(source)
        .bind(subject)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.iter().map(|row| row.try_get("account")).collect::<std::result::Result<_, _>>()?)
}

/// What [`claim_account`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountClaim {
    /// The account is (now) held by this subject; `released` are the names it held
    /// before (it was renamed at its source): what was issued under them must end, or
    /// the next subject given such a name would inherit it.
    Held { released: Vec<String> },
    /// Another subject holds the account name.
    Taken,
}

/// Holds `account` for `subject` (see migration 0008): the first sign-in claims a name,
/// the same subject keeps it, another subject is refused. A subject seen under a new
/// name (renamed at the IdP or in the directory) moves to it and releases the old one.
pub async fn claim_account(
    conn: &mut AnyConnection,
    account: &str,
    source: &str,
    subject: &str,
    now: u64,
) -> Result<AccountClaim> {
    match holder(&mut *conn, account).await? {
        Some(holder) if holder != subject => return Ok(AccountClaim::Taken),
        Some(_) => {
            sqlx::query("UPDATE accounts SET last_seen = $1 WHERE account = $2")
                .bind(ts(now))
                .bind(account)
                .execute(&mut *conn)
                .await?;
            return Ok(AccountClaim::Held { released: Vec::new() });
        }
        None => {}
    }
    let released: Vec<String> =
        sqlx::query("DELETE FROM accounts WHERE source = $1 AND subject = $2 RETURNING account")
            .bind(source)
            .bind(subject)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| row.try_get("account"))
            .collect::<std::result::Result<_, _>>()?;
    let inserted = sqlx::query(
        "INSERT INTO accounts (account, source, subject, first_seen, last_seen) VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (account) DO NOTHING",
    )
    .bind(account)
    .bind(source)
    .bind(subject)
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    // Zero rows: another replica claimed the name for someone between the two statements.
    Ok(if inserted.rows_affected() == 1 { AccountClaim::Held { released } } else { AccountClaim::Taken })
}

/// Frees an account name for the next subject that signs in with it.
pub async fn release_account(conn: &mut AnyConnection, account: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM accounts WHERE account = $1").bind(account).execute(&mut *conn).await?;
    Ok(done.rows_affected() == 1)
}
