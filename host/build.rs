//! Builds the example plugins in `plugins/` for `wasm32-wasip2` with a nested
//! cargo invocation and its own target directory (wasmtime's artifact
//! pattern), then copies the components into `<target>/weir-plugins`, the
//! default plugin directory of `weir serve`.

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: &[&str] = &["fs-large-files", "fs-changes", "enrich", "json-field-filter"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("host/ lives in the workspace root").to_path_buf();
    for dir in ["plugins", "sdk/src", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out = target.join("weir-plugins");
    build_components(&root, &target, PLUGINS, &out);
    println!("cargo:rustc-env=WEIR_EXAMPLE_PLUGIN_DIR={}", out.display());
}

/// Runs `cargo build --target wasm32-wasip2 --profile plugin` for `packages`
/// and copies each `<package>.wasm` into `out`.
fn build_components(root: &Path, target: &Path, packages: &[&str], out: &Path) {
    let wasm_target = target.join("wasm-guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "plugin", "--target-dir"])
        .arg(&wasm_target);
    for p in packages {
        cmd.args(["-p", p]);
    }
    // The outer build's flags and wrappers (clippy, coverage) are not for
    // the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cannot run cargo for the wasm32-wasip2 plugins");
    assert!(
        status.success(),
        "building the plugins for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
    );
    std::fs::create_dir_all(out).expect("cannot create the plugin output directory");
    for p in packages {
        let file = format!("{}.wasm", p.replace('-', "_"));
        let built = wasm_target.join("wasm32-wasip2/plugin").join(&file);
        let dest = out.join(&file);
        let tmp = out.join(format!(".{file}.tmp"));
        std::fs::copy(&built, &tmp).unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
        std::fs::rename(&tmp, &dest).expect("cannot rename the copied plugin");
    }
}
