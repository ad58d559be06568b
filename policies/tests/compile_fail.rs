//! What must not compile: an operation taking one permission's grant handed another's; a
//! grant made outside the policy engine; a proof type invented outside this crate. Each
//! case's expected compiler message is beside it (`TRYBUILD=overwrite` after a deliberate
//! change, on the workspace's toolchain).

#[test]
fn grants_carry_their_permission_in_the_type() {
    trybuild::TestCases::new().compile_fail("tests/compile_fail/*.rs");
}
