//! `sluice-edge`: the edge agent. Not built yet (see the edge-agent issue); until then it says so
//! and exits with an error rather than pretending to run.

fn main() -> std::process::ExitCode {
    eprintln!(
        "sluice-edge: the edge agent is not implemented yet; use `sluice produce` to send events"
    );
    std::process::ExitCode::from(2)
}
