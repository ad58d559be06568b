//! Injected time, so expiry and validity windows are testable without sleeping (one
//! clock for every crate: `portcullis_os::clock`).

pub use portcullis_os::clock::{Clock, ManualClock, SystemClock};
