//! What must not compile: proof of a complete rollback made anywhere but by the rollback
//! itself (telling the CA to forget a node requires one). The expected compiler message
//! is beside the case (`TRYBUILD=overwrite` after a deliberate change).

#[test]
fn only_a_rollback_proves_a_rollback() {
    trybuild::TestCases::new().compile_fail("tests/compile_fail/*.rs");
}
