//! Directory connections: TLS, timeouts, and the pool.
//!
//! Every directory operation holds a permit of one semaphore (`max_connections`), so a
//! login storm cannot open unbounded sockets to the directory. Connections bound as the
//! service account are kept for reuse (idle stack), because searching is what every
//! login and every API request (group refresh) does; a connection that failed or timed
//! out is dropped, never returned. Password checks get a fresh connection each time and
//! it is closed right after: a connection bound as a user must never serve another query.
//!
//! Lists that decide something (a user's groups) are read with [`ServiceConn::search_all`]:
//! RFC 2696 paged results, and any sign that the answer is not the whole list (a size,
//! time or administrative limit, a referral or search reference not followed, more
//! entries than we accept) is [`DirError::Incomplete`], never a shorter list.

use super::config::LdapConfig;
use ldap3::adapters::PagedResults;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchOptions};
use secrecy::{ExposeSecret, SecretString};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Why the directory could not answer; logged for the operator, never shown to a peer.
#[derive(Debug, thiserror::Error)]
pub(super) enum DirError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Ldap(#[from] ldap3::LdapError),
    #[error("the service account bind was refused (result code {0})")]
    ServiceBind(u32),
    #[error("search failed with result code {rc}: {text}")]
    Search { rc: u32, text: String },
    /// The directory answered, but not with the whole list: deciding on it would be
    /// deciding on a guess.
    #[error("incomplete answer: {0}")]
    Incomplete(String),
}

/// LDAP result codes this module looks at (RFC 4511, appendix A).
const RC_SUCCESS: u32 = 0;
const RC_TIME_LIMIT_EXCEEDED: u32 = 3;
const RC_SIZE_LIMIT_EXCEEDED: u32 = 4;
const RC_REFERRAL: u32 = 10;
const RC_ADMIN_LIMIT_EXCEEDED: u32 = 11;
const RC_NO_SUCH_OBJECT: u32 = 32;

/// Entries per page of a paged search (RFC 2696). Servers may send fewer per page.
const PAGE_SIZE: i32 = 200;

/// What the final result code of a search that must be complete means: `Ok(true)` the
/// whole answer, `Ok(false)` the base does not exist (an empty answer), or why not.
fn complete_answer(rc: u32, text: &str) -> Result<bool, DirError> {
    let why = match rc {
        RC_SUCCESS => return Ok(true),
        RC_NO_SUCH_OBJECT => return Ok(false),
        RC_SIZE_LIMIT_EXCEEDED => "the server's size limit cut the result off (sizeLimitExceeded)",
        RC_TIME_LIMIT_EXCEEDED => "the server's time limit cut the result off (timeLimitExceeded)",
        RC_ADMIN_LIMIT_EXCEEDED => "an administrative limit cut the result off (adminLimitExceeded)",
        RC_REFERRAL => "the server referred the search elsewhere (referral not followed)",
        rc => return Err(DirError::Search { rc, text: text.to_owned() }),
    };
    Err(DirError::Incomplete(why.to_owned()))
}

/// What a simple bind with a user's password said.
pub(super) enum BindOutcome {
    Accepted,
    Refused(u32),
}

pub(super) struct Pool {
    url: String,
    starttls: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    bind_dn: String,
    bind_password: SecretString,
    connect_timeout: Duration,
    operation_timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<Ldap>>,
}

impl Pool {
    pub(super) fn new(config: &LdapConfig) -> Pool {
        Pool {
            url: config.url.clone(),
            starttls: config.starttls,
            tls: config.tls.clone(),
            bind_dn: config.bind_dn.clone(),
            bind_password: config.bind_password.clone(),
            connect_timeout: config.connect_timeout,
            operation_timeout: config.operation_timeout,
            permits: Semaphore::new(config.max_connections),
            idle: Mutex::new(Vec::new()),
        }
    }

    async fn connect(&self) -> Result<Ldap, DirError> {
        let mut settings = LdapConnSettings::new().set_conn_timeout(self.connect_timeout).set_starttls(self.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(Arc::clone(tls));
        }
        // The crate's own timeout covers the TCP connect; this one also covers TLS.
        let (conn, ldap) =
            tokio::time::timeout(self.connect_timeout, LdapConnAsync::with_settings(settings, &self.url))
                .await
                .map_err(|_| DirError::Timeout(self.connect_timeout))??;
        // The driver ends when the last `Ldap` handle is dropped or the socket closes.
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "LDAP connection ended");
            }
        });
        Ok(ldap)
    }

    async fn timed<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, ldap3::LdapError>>,
    ) -> Result<T, DirError> {
        match tokio::time::timeout(self.operation_timeout, op).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(DirError::Timeout(self.operation_timeout)),
        }
    }

    /// A turn at the directory. Waiting for one is bounded too: when the directory hangs,
    /// every connection is held by a question that will time out, and a caller queued
    /// behind them would otherwise wait for all of them in turn.
    async fn permit(&self) -> Result<SemaphorePermit<'_>, DirError> {
        match tokio::time::timeout(self.operation_timeout, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(DirError::Timeout(Duration::ZERO)),
            Err(_) => Err(DirError::Timeout(self.operation_timeout)),
        }
    }

    /// A connection bound as the service account: reused when one is idle.
    pub(super) async fn service(&self) -> Result<ServiceConn<'_>, DirError> {
        let permit = self.permit().await?;
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut found = None;
            while let Some(mut ldap) = idle.pop() {
                if !ldap.is_closed() {
                    found = Some(ldap);
                    break;
                }
            }
            found
        };
        let ldap = match reused {
            Some(ldap) => ldap,
            None => {
                let mut ldap = self.connect().await?;
                let result = self.timed(ldap.simple_bind(&self.bind_dn, self.bind_password.expose_secret())).await?;
                if result.rc != RC_SUCCESS {
                    return Err(DirError::ServiceBind(result.rc));
                }
                ldap
            }
        };
        Ok(ServiceConn { pool: self, ldap: Some(ldap), _permit: permit })
    }

    /// Checks a password with a simple bind on a connection of its own, closed afterwards.
    /// The caller has refused empty passwords already (an empty one is an anonymous bind).
    pub(super) async fn user_bind(&self, dn: &str, password: &SecretString) -> Result<BindOutcome, DirError> {
        let _permit = self.permit().await?;
        let mut ldap = self.connect().await?;
        let result = self.timed(ldap.simple_bind(dn, password.expose_secret())).await;
        // Best effort: the socket closes when `ldap` is dropped anyway.
        let _ = tokio::time::timeout(self.operation_timeout, ldap.unbind()).await;
        let result = result?;
        Ok(if result.rc == RC_SUCCESS { BindOutcome::Accepted } else { BindOutcome::Refused(result.rc) })
    }
}

/// A service-account connection on loan; back to the idle stack on drop unless broken.
pub(super) struct ServiceConn<'p> {
    pool: &'p Pool,
    ldap: Option<Ldap>,
    _permit: SemaphorePermit<'p>,
}

impl ServiceConn<'_> {
    /// A search that returns the entries (at most `limit`, 0 = server default); a base
    /// that does not exist is an empty answer, any other failure an error. Timeouts and
    /// transport errors retire the connection.
    pub(super) async fn search(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        limit: i32,
    ) -> Result<Vec<SearchEntry>, DirError> {
        let Some(ldap) = self.ldap.as_mut() else {
            return Err(DirError::Timeout(Duration::ZERO));
        };
        let outcome = tokio::time::timeout(
            self.pool.operation_timeout,
            ldap.with_search_options(SearchOptions::new().sizelimit(limit)).search(base, scope, filter, attrs.to_vec()),
        )
        .await;
        let result = match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => {
                self.ldap = None;
                return Err(e.into());
            }
            Err(_) => {
                self.ldap = None;
                return Err(DirError::Timeout(self.pool.operation_timeout));
            }
        };
        let ldap3::SearchResult(entries, status) = result;
        match status.rc {
            RC_SUCCESS | RC_SIZE_LIMIT_EXCEEDED => Ok(entries
                .into_iter()
                .filter(|e| !e.is_ref() && !e.is_intermediate())
                .map(SearchEntry::construct)
                .collect()),
            RC_NO_SUCH_OBJECT => Ok(Vec::new()),
            rc => Err(DirError::Search { rc, text: status.text }),
        }
    }
}

impl ServiceConn<'_> {
    /// A search whose answer must be the whole list: paged (RFC 2696) so a server's
    /// per-request size limit does not cut it off, at most `max_entries` entries, and
    /// [`DirError::Incomplete`] when the server stopped early, referred us elsewhere or
    /// returned a search reference (which we do not chase). A base that does not exist is
    /// an empty answer. Any failure retires the connection (a paged search may be left
    /// half-read on it).
    pub(super) async fn search_all(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        max_entries: usize,
    ) -> Result<Vec<SearchEntry>, DirError> {
        let Some(mut ldap) = self.ldap.take() else {
            return Err(DirError::Timeout(Duration::ZERO));
        };
        let attrs: Vec<String> = attrs.iter().map(|a| (*a).to_owned()).collect();
        let read = async {
            let mut stream =
                ldap.streaming_search_with(PagedResults::new(PAGE_SIZE), base, scope, filter, attrs).await?;
            let mut entries = Vec::new();
            let mut stopped = None;
            while let Some(entry) = stream.next().await? {
                if entry.is_intermediate() {
                    continue;
                }
                if entry.is_ref() {
                    stopped = Some("the server returned a search reference (referral not followed)".to_owned());
                    break;
                }
                if entries.len() >= max_entries {
                    stopped = Some(format!("more than {max_entries} entries"));
                    break;
                }
                entries.push(SearchEntry::construct(entry));
            }
            if let Some(why) = stopped {
                return Ok(Err(DirError::Incomplete(why)));
            }
            let result = stream.finish().await;
            Ok::<_, ldap3::LdapError>(
                complete_answer(result.rc, &result.text).map(|whole| if whole { entries } else { Vec::new() }),
            )
        };
        match tokio::time::timeout(self.pool.operation_timeout, read).await {
            Ok(Ok(Ok(entries))) => {
                self.ldap = Some(ldap);
                Ok(entries)
            }
            // The connection is dropped with `ldap`: an abandoned paged search or a
            // broken socket must not serve the next request.
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(DirError::Timeout(self.pool.operation_timeout)),
        }
    }
}

impl Drop for ServiceConn<'_> {
    fn drop(&mut self) {
        if let Some(ldap) = self.ldap.take() {
            self.pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(ldap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_whole_answer_is_complete() {
        assert!(complete_answer(RC_SUCCESS, "").unwrap());
        assert!(!complete_answer(RC_NO_SUCH_OBJECT, "").unwrap());
        for rc in [RC_SIZE_LIMIT_EXCEEDED, RC_TIME_LIMIT_EXCEEDED, RC_ADMIN_LIMIT_EXCEEDED, RC_REFERRAL] {
            assert!(matches!(complete_answer(rc, ""), Err(DirError::Incomplete(_))), "rc {rc}");
        }
        assert!(matches!(complete_answer(50, "no"), Err(DirError::Search { rc: 50, .. })));
    }
}
