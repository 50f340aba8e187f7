//! Declares a 1 GiB initial linear memory when built for WebAssembly.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_FAMILY").as_deref() == Ok("wasm") {
        println!("cargo:rustc-link-arg=--initial-memory=1073741824");
    }
}
