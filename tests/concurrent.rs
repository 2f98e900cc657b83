//! Concurrent in-flight chunks: the watermark under random completion
//! orders and stops (a property test, in paused tokio time), and the
//! quickstart example with eight chunks in flight and flaky attempts under
//! real SIGTERM and SIGKILL.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{finish, reference_output, signal, Quickstart};
use proptest::prelude::*;
use spotbatch::concurrent::{Concurrent, ConcurrentJob};
use spotbatch::prelude::*;
use spotbatch::{CheckpointStore, JobKey, MemoryStore, Report, Status};

/// Chunk `i` covers record `i`; processing it takes `latency_ms[i]`
/// (paused time); commits are logged in the order they happen.
struct Recorded {
    latency_ms: Vec<u64>,
    commits: Arc<Mutex<Vec<u64>>>,
}

#[async_trait]
impl ConcurrentJob for Recorded {
    type Cursor = u64;
    type State = u64; // how many chunks were committed
    type Output = u64;

    async fn next_chunk(&self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < self.latency_ms.len() as u64).then(|| Chunk::between(*at, at + 1)))
    }

    async fn process(&self, chunk: &Chunk<u64>, ctx: &ChunkContext) -> Result<u64> {
        let i = *chunk.start();
        let latency = Duration::from_millis(self.latency_ms[i as usize]);
        ctx.cancellable(tokio::time::sleep(latency)).await?;
        Ok(i)
    }

    async fn commit(&self, chunk: &Chunk<u64>, output: u64, committed: &mut u64) -> Result<()> {
        assert_eq!(
            output,
            *chunk.start(),
            "a chunk's output went to another chunk"
        );
        self.commits.lock().unwrap().push(output);
        *committed += 1;
        Ok(())
    }
}

/// One run with `limit` chunks in flight, stopped `stop_after_ms` into it
/// (or not); returns the report and the stored cursor.
async fn run_once(
    store: &Arc<MemoryStore>,
    latency_ms: &[u64],
    limit: usize,
    stop_after_ms: Option<u64>,
    commits: &Arc<Mutex<Vec<u64>>>,
) -> (Report, u64) {
    let job = Recorded {
        latency_ms: latency_ms.to_vec(),
        commits: Arc::clone(commits),
    };
    let mut runner = Runner::new("prop", Concurrent::new(job, limit))
        .shared_store(Arc::clone(store) as Arc<dyn CheckpointStore>)
        .checkpoint(Every::chunks(3))
        .grace(Duration::from_secs(10))
        .signals(&[])
        .progress_every(None)
        .ecs_identity(false);
    if let Some(ms) = stop_after_ms {
        runner = runner.stop_on("test stop", tokio::time::sleep(Duration::from_millis(ms)));
    }
    let report = runner.run().await;
    // A stop already due when the run starts ends it before its first save.
    let Some(stored) = store.load(&JobKey::new("prop").unwrap()).await.unwrap() else {
        assert!(
            matches!(report.outcome, Outcome::Interrupted(_)),
            "{:?}",
            report.outcome
        );
        return (report, 0);
    };
    let cursor: u64 = stored.codec.decode(&stored.cursor).unwrap();
    let committed: u64 = stored.codec.decode(&stored.state).unwrap();
    assert_eq!(cursor, committed, "the cursor and the state disagree");
    (report, cursor)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random latencies (some past the drain deadline), random stops: the
    /// checkpoint is never past an unfinished chunk, commits happen in
    /// cursor order, and over a stopped run and its resumption every chunk
    /// is committed exactly once.
    #[test]
    fn the_watermark_never_passes_an_unfinished_chunk(
        latency_ms in prop::collection::vec(prop_oneof![9 => 0u64..400, 1 => 5_000u64..40_000], 1..40),
        limit in 1usize..12,
        stop_after_ms in 0u64..3_000,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let store = Arc::new(MemoryStore::new());
            let commits = Arc::new(Mutex::new(Vec::new()));
            let (first, cursor) =
                run_once(&store, &latency_ms, limit, Some(stop_after_ms), &commits).await;
            let after_first = commits.lock().unwrap().clone();
            let expected: Vec<u64> = (0..after_first.len() as u64).collect();
            prop_assert_eq!(&after_first, &expected, "commits out of order or repeated");
            prop_assert_eq!(cursor, after_first.len() as u64, "the checkpoint is not at the watermark");
            prop_assert!(
                matches!(first.outcome, Outcome::Interrupted(_) | Outcome::Completed),
                "{:?}", first.outcome
            );

            let (second, cursor) = run_once(&store, &latency_ms, limit, None, &commits).await;
            prop_assert!(second.is_complete(), "{:?}", second.outcome);
            let all = commits.lock().unwrap().clone();
            let expected: Vec<u64> = (0..latency_ms.len() as u64).collect();
            prop_assert_eq!(all, expected, "a chunk committed twice or never");
            prop_assert_eq!(cursor, latency_ms.len() as u64);
            Ok(())
        })?;
    }
}

/// A stop while chunks are in flight lets them finish (and be committed)
/// within the drain, instead of dropping finished work.
#[tokio::test(start_paused = true)]
async fn chunks_in_flight_at_a_stop_are_committed_within_the_drain() {
    let store = Arc::new(MemoryStore::new());
    let commits = Arc::new(Mutex::new(Vec::new()));
    // 16 chunks of 1 s each, 8 in flight at once; stop at 0.5 s.
    let (report, cursor) = run_once(&store, &[1_000; 16], 8, Some(500), &commits).await;
    assert!(
        matches!(report.outcome, Outcome::Interrupted(_)),
        "{:?}",
        report.outcome
    );
    assert_eq!(cursor, 8, "the in-flight chunks were not drained");
    assert_eq!(*commits.lock().unwrap(), (0..8).collect::<Vec<u64>>());
}

/// The quickstart's flags for eight chunks in flight, varying latencies
/// and a fifth of the attempts failing.
fn concurrent_flaky(job: &mut Quickstart) {
    job.extra_args = ["--concurrency", "8", "--flaky", "0.2"]
        .map(String::from)
        .to_vec();
}

/// Real processes, eight chunks in flight, flaky attempts: SIGTERM at random
/// moments until done: the output equals an uninterrupted run's and no
/// chunk is committed twice.
#[test]
fn eight_in_flight_and_flaky_under_sigterm_commit_each_chunk_once() {
    let (records, chunk) = (20_000, 100);
    let mut job = Quickstart::new(records, chunk, 50);
    concurrent_flaky(&mut job);
    let mut rng = fastrand::Rng::with_seed(0x5eed_00c8);
    let mut graceful = 0;
    for run in 0.. {
        assert!(run < 200, "no completion after {run} runs");
        let child = job.spawn();
        std::thread::sleep(Duration::from_millis(rng.u64(20..300)));
        signal(&child, libc::SIGTERM);
        let (status, _, err) = finish(child, Duration::from_secs(60));
        match (status.code(), status.signal()) {
            (Some(0), _) => break,
            (Some(75), _) => graceful += 1,
            (None, Some(libc::SIGTERM)) => {}
            other => panic!("run {run}: unexpected exit {other:?}\n{err}"),
        }
    }
    assert!(graceful >= 3, "only {graceful} graceful interruptions");
    assert_eq!(
        std::fs::read(job.out()).unwrap(),
        reference_output(records, chunk)
    );
    let mut starts: Vec<u64> = job.audited_chunks().iter().map(|c| c.0).collect();
    starts.sort_unstable();
    let expected: Vec<u64> = (0..records).step_by(chunk as usize).collect();
    assert_eq!(starts, expected, "a chunk was committed twice or never");
    assert_eq!(job.checkpoint().unwrap().status, Status::Completed);
}

/// The same under SIGKILL as well: output identical to an uninterrupted run.
#[test]
fn eight_in_flight_and_flaky_under_sigterm_and_sigkill_give_the_same_output() {
    let (records, chunk) = (20_000, 100);
    let mut job = Quickstart::new(records, chunk, 50);
    job.every_chunks = 10;
    concurrent_flaky(&mut job);
    let mut rng = fastrand::Rng::with_seed(0x5eed_00c9);
    let mut kills = 0;
    for run in 0.. {
        assert!(run < 200, "no completion after {run} runs");
        let child = job.spawn();
        std::thread::sleep(Duration::from_millis(rng.u64(20..300)));
        let sig = if rng.bool() {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        signal(&child, sig);
        let (status, _, err) = finish(child, Duration::from_secs(60));
        match (status.code(), status.signal()) {
            (Some(0), _) => break,
            (Some(75), _) => {}
            (None, Some(libc::SIGKILL)) => kills += 1,
            (None, Some(libc::SIGTERM)) => {}
            other => panic!("run {run}: unexpected exit {other:?}\n{err}"),
        }
        let _ = job.checkpoint(); // decodes and verifies, or panics
    }
    assert!(kills >= 3, "only {kills} kills landed");
    assert_eq!(
        std::fs::read(job.out()).unwrap(),
        reference_output(records, chunk)
    );
}
