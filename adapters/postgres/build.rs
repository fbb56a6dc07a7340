//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds them,
//! and the compiler does not watch the directory by itself.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
