//! Chunks in flight: throughput of I/O-bound chunks with up to K in flight,
//! and the per-chunk cost of the concurrent adapter, each against a plain
//! baseline measured in the same run.
//!
//! ```text
//! cargo bench --bench concurrency
//! ```
//!
//! 1. **Throughput.** Chunks that wait 10 ms (a tokio sleep: simulated I/O
//!    latency) and do nothing else, `25·K` of them, with K = 1, 4, 16, 64
//!    chunks in flight through [`Concurrent`]. `speedup` is the throughput
//!    against K = 1 through the runner; `of K` is the speedup ÷ K (the goal:
//!    at least 0.9). The baseline column is the same sleeps with K at a time
//!    by hand (a `JoinSet` kept full), without checkpoints.
//! 2. **Per chunk, no I/O.** A chunk that adds one number, a million of
//!    them (a tenth with `--quick`): the one-at-a-time [`Job`], and
//!    [`Concurrent`] with K = 1 and K = 64 (each chunk a tokio task), against
//!    a plain loop. ns per chunk.
//!
//! Everything on one current-thread tokio runtime, to a `MemoryStore` with
//! the default checkpoint policy, no signal handlers, no tracing subscriber.
//! Run without `--bench` (as `cargo test --benches` does), a tiny smoke pass.

use std::hint::black_box;
use std::time::{Duration, Instant};

use spotbatch::concurrent::{Concurrent, ConcurrentJob};
use spotbatch::prelude::*;
use spotbatch::MemoryStore;

/// `chunks` chunks that each wait `latency`.
struct Io {
    chunks: u64,
    latency: Duration,
}

#[async_trait]
impl ConcurrentJob for Io {
    type Cursor = u64;
    type State = u64;
    type Output = u64;

    async fn next_chunk(&self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < self.chunks).then(|| Chunk::between(*at, at + 1)))
    }

    async fn process(&self, chunk: &Chunk<u64>, _: &ChunkContext) -> Result<u64> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        Ok(black_box(*chunk.start()))
    }

    async fn commit(&self, _: &Chunk<u64>, n: u64, sum: &mut u64) -> Result<()> {
        *sum = sum.wrapping_add(n);
        Ok(())
    }
}

/// The one-at-a-time twin of [`Io`] with no latency.
struct Sum {
    chunks: u64,
}

#[async_trait]
impl Job for Sum {
    type Cursor = u64;
    type State = u64;

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < self.chunks).then(|| Chunk::between(*at, at + 1)))
    }

    async fn process(&mut self, chunk: &Chunk<u64>, sum: &mut u64, _: &ChunkContext) -> Result<()> {
        *sum = sum.wrapping_add(black_box(*chunk.start()));
        Ok(())
    }
}

async fn run<J: Job>(job: J) -> Duration {
    let started = Instant::now();
    let report = Runner::new("bench", job)
        .store(MemoryStore::new())
        .signals(&[])
        .progress_every(None)
        .ecs_identity(false)
        .run()
        .await;
    let took = started.elapsed();
    assert!(report.is_complete(), "{:?}", report.outcome);
    took
}

/// The same sleeps, `k` at a time, by hand.
async fn by_hand(chunks: u64, k: usize, latency: Duration) -> Duration {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..chunks {
        if set.len() == k {
            black_box(set.join_next().await);
        }
        set.spawn(async move {
            tokio::time::sleep(latency).await;
            i
        });
    }
    while black_box(set.join_next().await).is_some() {}
    started.elapsed()
}

fn plain_loop(chunks: u64) -> Duration {
    let started = Instant::now();
    let mut sum = 0u64;
    for i in 0..chunks {
        sum = sum.wrapping_add(black_box(i));
    }
    black_box(sum);
    started.elapsed()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    let (per_k, no_io, reps) = match (bench, quick) {
        (false, _) => (2, 1_000, 1),
        (true, true) => (10, 100_000, 3),
        (true, false) => (25, 1_000_000, 5),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let latency = Duration::from_millis(10);

    println!("| chunks in flight | chunks | runner | by hand | ratio | speedup | of K |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut base_rate = None;
    for k in [1usize, 4, 16, 64] {
        let chunks = per_k * k as u64;
        let runner = rt.block_on(run(Concurrent::new(Io { chunks, latency }, k)));
        let hand = rt.block_on(by_hand(chunks, k, latency));
        let rate = chunks as f64 / runner.as_secs_f64();
        let base = *base_rate.get_or_insert(rate);
        let speedup = rate / base;
        println!(
            "| {k} | {chunks} | {:.0} ms | {:.0} ms | {:.2}× | {speedup:.1}× | {:.2} |",
            runner.as_secs_f64() * 1e3,
            hand.as_secs_f64() * 1e3,
            runner.as_secs_f64() / hand.as_secs_f64(),
            speedup / k as f64,
        );
    }

    println!("\n| per chunk, no I/O ({no_io} chunks) | ns per chunk | plain loop | diff |");
    println!("|---|---:|---:|---:|");
    let plain = median(
        (0..reps)
            .map(|_| plain_loop(no_io).as_nanos() as f64 / no_io as f64)
            .collect(),
    );
    type Timed<'a> = Box<dyn Fn() -> Duration + 'a>;
    let rows: [(&str, Timed<'_>); 3] = [
        (
            "Job, one at a time",
            Box::new(|| rt.block_on(run(Sum { chunks: no_io }))),
        ),
        (
            "Concurrent, K = 1",
            Box::new(|| {
                rt.block_on(run(Concurrent::new(
                    Io {
                        chunks: no_io,
                        latency: Duration::ZERO,
                    },
                    1,
                )))
            }),
        ),
        (
            "Concurrent, K = 64",
            Box::new(|| {
                rt.block_on(run(Concurrent::new(
                    Io {
                        chunks: no_io,
                        latency: Duration::ZERO,
                    },
                    64,
                )))
            }),
        ),
    ];
    for (name, f) in rows {
        let ns = median(
            (0..reps)
                .map(|_| f().as_nanos() as f64 / no_io as f64)
                .collect(),
        );
        println!("| {name} | {ns:.0} | {plain:.1} | {:.0} |", ns - plain);
    }
}
