//! Records the target triple upshift is built for: a signed release must name it (see
//! `src/release/signed.rs`).

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=UPSHIFT_BUILD_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
