//! `allot-supervise supervise RUN_DIR`: a job's supervisor (see
//! `agent/supervisor.rs`), started by the agent once per job. A binary of
//! its own because it starts once per job: it links only what a supervisor
//! uses, so it starts in a fraction of the time the whole `allot` binary
//! takes (`allot supervise RUN_DIR` does the same).

fn main() {
    let mut args = std::env::args_os().skip(1);
    let code = match (args.next(), args.next()) {
        (Some(cmd), Some(dir)) if cmd == "supervise" => {
            allot_scheduler::agent::supervisor::main(std::path::Path::new(&dir))
        }
        (Some(cmd), None) if cmd == "zygote" => allot_scheduler::agent::supervisor::zygote(),
        _ => {
            eprintln!(
                "usage: allot-supervise supervise RUN_BASE | allot-supervise zygote (started by the agent)"
            );
            2
        }
    };
    std::process::exit(code);
}
