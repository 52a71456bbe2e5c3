//! The `weir` binary: everything lives in [`weir_host::cli`].

/// jemalloc rather than glibc's malloc: with glibc, malloc and free took
/// about a quarter of the CPU of the event pipeline (`perf`); with jemalloc
/// the pipeline ran 30-50% faster in the same run, ingest and the tree a
/// little faster. (mimalloc was as fast on the pipeline but made the
/// snapshot ingest five times slower.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Freed pages go back to the system within a second, from a background
/// thread, rather than jemalloc's default ten seconds: an index settles
/// soon after a snapshot's buffers are freed.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: Option<&'static std::ffi::c_char> =
    Some(unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() });

fn main() {
    let code = weir_host::cli::run(
        std::env::args(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    std::process::exit(code);
}
