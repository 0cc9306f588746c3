//! The `kavach-stream` binary; see `kavach-stream --help`. All the work is in the library.

fn main() -> std::process::ExitCode {
    kavach_stream::cli::main()
}
