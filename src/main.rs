//! The `ponte` binary: parse the CLI, set up logging, load config, bind, and hand over to `ponte::run`.

use std::process::ExitCode;

fn main() -> ExitCode {
    ponte::cli::main()
}
