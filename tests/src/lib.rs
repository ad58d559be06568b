//! Test harness: starts real binaries and peers.
