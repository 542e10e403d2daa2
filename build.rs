//! Generates `include/keel.h` from the `extern "C"` surface in `src/ffi/`
//! and the status codes in `src/status.rs`.
//!
//! The header is committed; CI regenerates it and fails when a byte
//! changes, so the file is only rewritten when its content differs (an
//! unchanged header keeps its mtime and does not trigger C rebuilds).

use std::{env, fs, path::PathBuf};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=build.rs");

    // SONAME follows the ABI version, not the crate version: libkeel.so.<ABI>.
    let version_rs = fs::read_to_string(root.join("src/ffi/version.rs")).expect("read src/ffi/version.rs");
    let abi = version_rs
        .lines()
        .find_map(|l| l.trim().strip_prefix("pub const KEEL_ABI_VERSION: u32 = "))
        .and_then(|rest| rest.trim_end_matches(';').parse::<u32>().ok())
        .expect("src/ffi/version.rs defines KEEL_ABI_VERSION");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkeel.so.{abi}");

    let mut config = cbindgen::Config::from_file(root.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable and valid");
    let major = env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    let minor = env::var("CARGO_PKG_VERSION_MINOR").unwrap();
    let patch = env::var("CARGO_PKG_VERSION_PATCH").unwrap();
    let number = major.parse::<u32>().unwrap() * 10_000
        + minor.parse::<u32>().unwrap() * 100
        + patch.parse::<u32>().unwrap();
    // The version macros come from Cargo.toml so they can never drift from
    // the library that `keel_version()` reports at run time.
    config.after_includes = Some(format!(
        "\n#define KEEL_VERSION_MAJOR {major}\n#define KEEL_VERSION_MINOR {minor}\n\
         #define KEEL_VERSION_PATCH {patch}\n#define KEEL_VERSION_NUMBER {number}\n\
         #define KEEL_VERSION_STRING \"{major}.{minor}.{patch}\"\n"
    ));

    // Only the C surface is parsed: src/ffi/ (and the modules it declares)
    // plus the status codes, so engine internals never leak into the header.
    let bindings = match cbindgen::Builder::new()
        .with_src(root.join("src/status.rs"))
        .with_src(root.join("src/ffi/mod.rs"))
        .with_config(config)
        .generate()
    {
        Ok(b) => b,
        Err(e) => panic!("cbindgen failed to generate include/keel.h: {e}"),
    };
    let mut out = Vec::new();
    bindings.write(&mut out);
    let path = root.join("include").join("keel.h");
    if fs::read(&path).ok().as_deref() != Some(&out[..]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &out).expect("write include/keel.h");
    }
}
