//! How many of the CA's background jobs (hardware discovery, Proxmox VE collection) a
//! bastion runs at once: the `concurrency` each claim answer names, applied as semaphore
//! permits that jobs in flight keep holding when the CA changes the number.

use std::sync::Arc;
use tokio::sync::Semaphore;

#[derive(Default)]
pub(crate) struct RunLimit(Option<(u32, Arc<Semaphore>)>);

impl RunLimit {
    /// The permits for `concurrency` (clamped to 1–64); a new semaphore only when it changed.
    pub(crate) fn permits(&mut self, concurrency: u32) -> Arc<Semaphore> {
        let concurrency = concurrency.clamp(1, 64);
        match &self.0 {
            Some((n, permits)) if *n == concurrency => Arc::clone(permits),
            _ => {
                let permits = Arc::new(Semaphore::new(usize::try_from(concurrency).unwrap_or(1)));
                self.0 = Some((concurrency, Arc::clone(&permits)));
                permits
            }
        }
    }
}
