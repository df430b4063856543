//! The `allot` binary: controller, agent and CLI in one.

use clap::Parser;

use allot_scheduler::cli::{self, Cli};

fn main() {
    // A job's supervisor (started by an agent) runs before anything else:
    // no argument parsing, no tracing, no thread pool.
    let mut args = std::env::args_os();
    let first = args.nth(1);
    if first.as_ref().is_some_and(|a| a == "zygote") {
        std::process::exit(allot_scheduler::agent::supervisor::zygote());
    }
    if first.is_some_and(|a| a == "supervise") {
        let code = match args.next() {
            Some(dir) => allot_scheduler::agent::supervisor::main(std::path::Path::new(&dir)),
            None => {
                eprintln!("usage: allot supervise RUN_DIR (started by the agent, one per job)");
                2
            }
        };
        std::process::exit(code);
    }
    let cli = Cli::parse();
    cli::init_tracing(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        match cli::main(cli).await {
            Ok(code) => code,
            Err(e) => {
                print_error(&e);
                1
            }
        }
    });
    std::process::exit(code);
}

fn print_error(e: &anyhow::Error) {
    if let Some(sdk) = e.downcast_ref::<allot_sdk::Error>() {
        match sdk.field() {
            Some(field) => eprintln!("error ({:?}, field {field}): {}", sdk.code(), sdk.message()),
            None => eprintln!("error ({:?}): {}", sdk.code(), sdk.message()),
        }
    } else {
        eprintln!("error: {e:#}");
    }
}
