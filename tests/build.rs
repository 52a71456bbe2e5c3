//! Builds the hostile and rule-breaking test guests (`tests/guests/*`) as
//! components into `<target>/weir-test-guests`.

use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = weir_build_support::workspace_root(&manifest);
    let mut guests: Vec<String> = std::fs::read_dir(manifest.join("guests"))
        .expect("tests/guests exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    guests.sort();
    let names: Vec<&str> = guests.iter().map(String::as_str).collect();
    let out = weir_build_support::target_dir(&root).join("weir-test-guests");
    weir_build_support::build_components(
        &root,
        &names,
        &["tests/guests", "sdk/src", "wit", "Cargo.toml"],
        &out,
    );
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=WEIR_TEST_GUEST_DIR={}", out.display());
}
