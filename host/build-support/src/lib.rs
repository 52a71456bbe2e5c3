//! Used by build scripts (never at run time): builds workspace crates as
//! `wasm32-wasip2` components with a nested cargo invocation and a target
//! directory of its own (wasmtime's artifact pattern), and copies the
//! components into an output directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root, from a member's `CARGO_MANIFEST_DIR`.
pub fn workspace_root(manifest_dir: &Path) -> PathBuf {
    manifest_dir
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|toml| toml.contains("[workspace]"))
        })
        .expect("a workspace root above the package")
        .to_path_buf()
}

/// The outer build's target directory.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Makes sure the `wasm32-wasip2` standard library is installed, adding it
/// with rustup when it is missing, so that a fresh checkout builds with
/// nothing but `cargo`.
fn ensure_wasm_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if sysroot.is_some_and(|root| root.join("lib/rustlib/wasm32-wasip2").is_dir()) {
        return;
    }
    println!("cargo:warning=installing the wasm32-wasip2 target with rustup");
    let added = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status();
    if !added.is_ok_and(|s| s.success()) {
        println!(
            "cargo:warning=`rustup target add wasm32-wasip2` failed; install the target by hand"
        );
    }
}

/// Builds `packages` for `wasm32-wasip2` with the `plugin` profile and copies
/// each `<package>.wasm` (dashes as underscores) into `out`, with its
/// manifest (`<watch dir>/<package>/plugin.toml`, as `<package>.toml`) when
/// it has one; each by write then rename so that a watcher never sees half
/// a file. Tells cargo to rerun
/// when `watch` (paths below `root`) change.
pub fn build_components(root: &Path, packages: &[&str], watch: &[&str], out: &Path) {
    for dir in watch {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    ensure_wasm_target();
    let wasm_target = target_dir(root).join("wasm-guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "plugin",
            "--target-dir",
        ])
        .arg(&wasm_target);
    for p in packages {
        cmd.args(["-p", p]);
    }
    // The outer build's flags and wrappers (clippy, coverage) are not for
    // the guests, and its target settings are not theirs either.
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
    let status = cmd
        .status()
        .expect("cannot run cargo for the wasm32-wasip2 components");
    assert!(
        status.success(),
        "building {packages:?} for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
    );
    std::fs::create_dir_all(out).expect("cannot create the component output directory");
    for p in packages {
        let stem = p.replace('-', "_");
        // A package's manifest (`plugin.toml`) goes beside its component as
        // `<stem>.toml`, before the component, so a watcher sees both.
        let manifest = watch
            .iter()
            .map(|dir| root.join(dir).join(p).join("plugin.toml"))
            .find(|m| m.is_file());
        let target = out.join(format!("{stem}.toml"));
        match manifest {
            Some(m) => {
                let tmp = out.join(format!(".{stem}.toml.tmp"));
                std::fs::copy(&m, &tmp)
                    .unwrap_or_else(|e| panic!("cannot copy {}: {e}", m.display()));
                std::fs::rename(&tmp, &target).expect("cannot rename the copied manifest");
            }
            None => {
                let _ = std::fs::remove_file(&target);
            }
        }
        let file = format!("{stem}.wasm");
        let built = wasm_target.join("wasm32-wasip2/plugin").join(&file);
        let tmp = out.join(format!(".{file}.tmp"));
        std::fs::copy(&built, &tmp)
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
        std::fs::rename(&tmp, out.join(&file)).expect("cannot rename the copied component");
    }
}
