//! The CA as a library, in the test's own process: for storage conformance (the same
//! calls against SQLite and PostgreSQL) and for signing at a chosen time with an
//! injected [`portcullis_ca::ManualClock`].

use portcullis_ca::{Ca, CaConfig, Clock};
use secrecy::SecretString;
use std::path::Path;
use std::sync::Arc;

/// Encrypts the CA keys of in-process test CAs. Fixed and public: test keys only.
pub const TEST_PASSPHRASE: &str = "portcullis-test-passphrase-not-secret";

/// Opens a CA on `db_url` with the policy files in `policy_dir`, telling time by `clock`.
pub async fn ca_in_process(db_url: &str, policy_dir: &Path, clock: impl Clock) -> anyhow::Result<Ca> {
    let config = CaConfig::new(db_url.to_owned(), policy_dir.to_owned(), SecretString::from(TEST_PASSPHRASE));
    Ok(Ca::open(config, Arc::new(clock)).await?)
}

/// `sqlite://<dir>/portcullis.db`, created on first open.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("portcullis.db").display())
}

/// A running server's own CA, opened in-process on the same database (with the server's
/// passphrase), so a test can choose the clock or reach the CA keys.
pub async fn same_ca(server: &crate::Server, clock: Arc<dyn Clock>) -> Ca {
    let passphrase = std::fs::read_to_string(server.data_dir.join("ca-passphrase")).unwrap();
    let config = CaConfig::new(
        sqlite_url(&server.data_dir),
        server.policy_dir(),
        SecretString::from(passphrase.trim().to_owned()),
    );
    Ca::open(config, clock).await.unwrap()
}
