fn main() {
    if let Err(e) = electra::cli::run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
