//! The version macros in include/keel.h, keel_version() and Cargo.toml agree.

use std::ffi::CStr;

fn header_define(header: &str, name: &str) -> String {
    header
        .lines()
        .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
        .unwrap_or_else(|| panic!("include/keel.h has no #define {name}"))
        .trim()
        .trim_matches('"')
        .to_string()
}

#[test]
fn header_runtime_and_cargo_versions_agree() {
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/keel.h")).unwrap();
    assert_eq!(header_define(&header, "KEEL_VERSION_MAJOR"), env!("CARGO_PKG_VERSION_MAJOR"));
    assert_eq!(header_define(&header, "KEEL_VERSION_MINOR"), env!("CARGO_PKG_VERSION_MINOR"));
    assert_eq!(header_define(&header, "KEEL_VERSION_PATCH"), env!("CARGO_PKG_VERSION_PATCH"));
    assert_eq!(header_define(&header, "KEEL_VERSION_STRING"), env!("CARGO_PKG_VERSION"));
    // SAFETY: keel_version returns a static NUL-terminated string, never NULL.
    let runtime = unsafe { CStr::from_ptr(keel::ffi::keel_version()) }.to_str().unwrap();
    assert_eq!(runtime, env!("CARGO_PKG_VERSION"));
    assert_eq!(header_define(&header, "KEEL_ABI_VERSION"), keel::ffi::keel_abi_version().to_string());
    let n: u32 = header_define(&header, "KEEL_VERSION_NUMBER").parse().unwrap();
    let (ma, mi, pa): (u32, u32, u32) = (
        env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap(),
        env!("CARGO_PKG_VERSION_MINOR").parse().unwrap(),
        env!("CARGO_PKG_VERSION_PATCH").parse().unwrap(),
    );
    assert_eq!(n, ma * 10_000 + mi * 100 + pa);
}
