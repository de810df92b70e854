//! Records the target triple this crate is compiled for, so that the default asset selection can
//! look for it in asset names (`app-x86_64-unknown-linux-gnu.tar.gz`).

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=UPSHIFT_GITHUB_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
