// mimalloc, not glibc's malloc: under load glibc's arena locks showed in the profile (a buffer
// allocated on a tokio worker and freed on the audit committer locks the worker's arena), and
// mimalloc frees across threads without a lock. Its `override` feature makes it serve the C
// and C++ allocations too (RocksDB's): left to glibc, those kept up to 200 MiB resident in
// per-thread arenas after erasures (every purge flushes ten memtables and allocates their
// successors on whichever thread runs it). Before/after in docs/performance.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    allocator::return_freed_memory_promptly();
    qoima::cli::main()
}

mod allocator {
    use std::ffi::{c_int, c_long};

    /// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (libmimalloc-sys names it only for
    /// v2); the test below fails if an upgrade moves it.
    const PURGE_DELAY: c_int = 15;
    /// mimalloc v3 keeps freed pages for a second before returning them to the OS; a few
    /// bursts of erasures a second then hold what each burst freed. Ten milliseconds (v2's
    /// default) returns it between bursts.
    const PURGE_DELAY_MS: c_long = 10;

    extern "C" {
        #[cfg(test)]
        fn mi_option_get(option: c_int) -> c_long;
        fn mi_option_set(option: c_int, value: c_long);
    }

    /// Sets the purge delay unless `MIMALLOC_PURGE_DELAY` does.
    pub fn return_freed_memory_promptly() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: mimalloc's option setters take any option index and value; this one is
            // checked by the test below.
            unsafe { mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_purge_delay_option_is_the_one_mimalloc_defaults_to_a_second() {
            // v3's default for purge_delay is 1000 ms; no neighbouring option defaults to it.
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(unsafe { mi_option_get(PURGE_DELAY) }, 1000);
            }
        }
    }
}
