//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!`
//! embeds the files of the top-level `migrations/` folder at compile time,
//! and a proc macro cannot ask Cargo to watch a directory by itself.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
