//! `logdb-recovery-sim`: runs the recovery simulator (src/recovery_sim.rs) over many seeds, or
//! replays one, and prints JSON lines: schedules per second and what they did, or the first
//! violation with the seed that replays it.
//!
//! `cargo run --release -p logdb-compute --bin logdb-recovery-sim -- --schedules 100000`

use std::time::Instant;

use clap::Parser;
use logdb_compute::recovery_sim;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "deterministic fault schedules against logdb's crash recovery")]
struct Args {
    /// Replay this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Schedules to run (seeds from --first on).
    #[arg(long, default_value_t = 100_000)]
    schedules: u64,
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Steps per schedule.
    #[arg(long, default_value_t = 300)]
    steps: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (first, count) = match args.seed {
        Some(s) => (s, 1),
        None => (args.first, args.schedules),
    };
    let started = Instant::now();
    match recovery_sim::sweep(first, count, args.steps) {
        Ok(s) => {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({"bench": "recovery_sim", "schedules": count, "steps_per_schedule": args.steps,
                       "seconds": (secs * 100.0).round() / 100.0,
                       "schedules_per_s": (count as f64 / secs).round(),
                       "transactions": s.transactions, "acknowledged": s.acknowledged,
                       "recoveries": s.recoveries, "failed_recoveries": s.failed_recoveries,
                       "zombie_deliveries": s.zombie_deliveries,
                       "deposed_acknowledged": s.deposed_acknowledged,
                       "segment_crashes": s.segment_crashes, "frames_lost": s.frames_lost,
                       "torn_frames": s.torn_frames, "duplicates": s.duplicates,
                       "overflows": s.overflows})
            );
            Ok(())
        }
        Err(v) => {
            println!(
                "{}",
                json!({"bench": "recovery_sim", "violation": v.what, "seed": v.seed, "step": v.step})
            );
            anyhow::bail!("{v}")
        }
    }
}
