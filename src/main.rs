// mimalloc, not glibc's malloc: under load glibc's arena locks showed in the profile (a buffer
// allocated on a tokio worker and freed on the audit committer locks the worker's arena), and
// mimalloc frees across threads without a lock. Before/after in docs/performance.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    qoima::cli::main()
}
