//! `xl`: the rxen toolstack CLI (placeholder).
fn main() {
    eprintln!("xl: not implemented yet");
    std::process::exit(1);
}
