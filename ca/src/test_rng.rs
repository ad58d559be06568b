//! A deterministic pseudo-random source for the crate's property tests: the same
//! schedule on every run, so a failure reproduces (xorshift64; not for anything secret).

/// Successive values of xorshift64 from a fixed seed.
pub fn xorshift() -> impl FnMut() -> u64 {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
