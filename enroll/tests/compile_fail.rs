//! What must not compile: proof of a complete rollback made anywhere but by the rollback
//! itself (telling the CA to forget a node requires one); a reload of sshd without the
//! proof that `sshd -t` read the configuration, or with a file written after that check.
//! The expected compiler message is beside each case (`TRYBUILD=overwrite` after a
//! deliberate change).

#[test]
fn enrollment_phases_are_types() {
    trybuild::TestCases::new().compile_fail("tests/compile_fail/*.rs");
}
