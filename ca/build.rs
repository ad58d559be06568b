// `sqlx::migrate!` embeds `migrations/` at compile time, and on stable Rust cargo does not
// know it read the directory: without this, a new migration file is left out of an
// incremental build (the binary then refuses a database that has it).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
