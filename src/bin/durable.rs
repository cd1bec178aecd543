//! The `durable` command-line tool: `cargo install durable --features cli`.
//! See `durable::cli` for the commands and exit codes.

fn main() -> std::process::ExitCode {
    durable::cli::main()
}
