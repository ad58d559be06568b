//! What every Portcullis program needs from the operating system, written once: the
//! clock (injected, so validity windows are testable without sleeping) and durable
//! atomic file writes. Standard library only: the enrollment tool that runs on every
//! node depends on it.

pub mod clock;
pub mod fs;
