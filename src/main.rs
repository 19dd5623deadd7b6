use std::process::ExitCode;

fn main() -> ExitCode {
    match electra::cli::run() {
        Ok(status) => status,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
