fn main() -> std::process::ExitCode {
    qoima::cli::main()
}
