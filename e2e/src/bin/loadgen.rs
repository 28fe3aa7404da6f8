//! `loadgen`: the benchmark of quality.md, one command:
//! `cargo run --release -p e2e --bin loadgen -- SCENARIO [--duration-secs N] [--clients N] [--keep]`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use e2e::bench::{self, cli};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let options = match cli::Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("{err}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    // On Ctrl-C or SIGTERM the run is dropped, and its guards stop the service and drop
    // the database before we exit.
    tokio::select! {
        all_ran = bench::run(&options) => if all_ran { ExitCode::SUCCESS } else { ExitCode::FAILURE },
        signal = interrupted() => {
            // The run has been dropped by now: services stopped, databases dropped.
            eprintln!("interrupted ({signal}); cleaning up the broker");
            bench::broker::delete_remembered(bench::fixture::AMQP_URL).await;
            ExitCode::from(130)
        }
    }
}

async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "Ctrl-C";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}
