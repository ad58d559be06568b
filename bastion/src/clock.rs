//! Time is injected so expiry is testable without sleeping (one clock for every crate:
//! `portcullis_os::clock`).

pub use portcullis_os::clock::{Clock, SystemClock};
