//! `imrouter-loadgen`: simulated IM nodes driving an imrouter.
//!
//! The generator itself arrives with the load generator issue; this binary
//! exists so the workspace layout is final from the first commit.

fn main() {
    eprintln!("imrouter-loadgen: not implemented yet");
    std::process::exit(2);
}
