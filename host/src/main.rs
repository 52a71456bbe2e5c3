//! The `weir` binary: everything lives in [`weir_host::cli`].

fn main() {
    let code = weir_host::cli::run(
        std::env::args(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    std::process::exit(code);
}
