//! Builds the example plugins (`plugins/`) as components into
//! `<target>/weir-plugins`, the default plugin directory of `weir serve`.

use std::path::PathBuf;

const PLUGINS: &[&str] = &[
    "fs-large-files",
    "fs-changes",
    "enrich",
    "json-field-filter",
];

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = weir_build_support::workspace_root(&manifest);
    let out = weir_build_support::target_dir(&root).join("weir-plugins");
    weir_build_support::build_components(
        &root,
        PLUGINS,
        &["plugins", "sdk/src", "wit", "Cargo.toml"],
        &out,
    );
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=WEIR_EXAMPLE_PLUGIN_DIR={}", out.display());
}
