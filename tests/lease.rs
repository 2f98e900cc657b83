//! The lease: taken at start, renewed while running, released at the end;
//! a live one refuses a second runner, an expired or orphaned one is taken over.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use spotbatch::prelude::*;
use spotbatch::{
    Checkpoint, CheckpointPolicy, CheckpointStore, Codec, Error, JobKey, Lease, MemoryStore,
    Status, Writer,
};

/// `chunks` chunks of `secs` seconds each (paused time).
#[derive(Clone)]
struct Slow {
    chunks: u64,
    secs: u64,
    store: MemoryStore,
    /// What the store held as each chunk started.
    seen: Arc<Mutex<Vec<Option<Checkpoint>>>>,
    /// When each chunk's work ended.
    ended: Arc<Mutex<Vec<tokio::time::Instant>>>,
}

#[async_trait]
impl Job for Slow {
    type Cursor = u64;
    type State = ();

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < self.chunks).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(&mut self, _: &Chunk<u64>, _: &mut (), _: &ChunkContext) -> Result<()> {
        let now = self.store.load(&key()).await?;
        self.seen.lock().unwrap().push(now);
        tokio::time::sleep(Duration::from_secs(self.secs)).await;
        self.ended.lock().unwrap().push(tokio::time::Instant::now());
        Ok(())
    }
}

fn key() -> JobKey {
    JobKey::new("leased").unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn slow(chunks: u64, secs: u64, store: &MemoryStore) -> Slow {
    Slow {
        chunks,
        secs,
        store: store.clone(),
        seen: Arc::default(),
        ended: Arc::default(),
    }
}

fn runner(job: Slow, ttl: Duration) -> Runner<Slow> {
    let store = job.store.clone();
    Runner::new("leased", job)
        .store(store)
        .signals(&[])
        .checkpoint(CheckpointPolicy::at_exit_only())
        .lease(ttl)
}

/// A checkpoint of this job at cursor 2, written by `writer`, holding a lease until `expires_ms`.
async fn held_by(store: &MemoryStore, writer: Writer, expires_ms: u64) -> Checkpoint {
    let mut c = Checkpoint::new(key(), writer);
    c.cursor_type = std::any::type_name::<(u64, ())>().to_owned();
    c.schema = 1;
    c.cursor = Codec::Bincode.encode(&2u64).unwrap();
    c.state = Codec::Bincode.encode(&()).unwrap();
    c.lease = Some(Lease::new(c.writer.run_id, expires_ms));
    c.history = vec![spotbatch::RunRecord::started(&c.writer, now_ms() - 1000)];
    store.save(&c, None).await.unwrap();
    c
}

fn elsewhere() -> Writer {
    let mut w = Writer::this_process();
    w.host = "ip-10-0-0-7.eu-west-1.compute.internal".into();
    w.task = "arn:aws:ecs:eu-west-1:123456789012:task/batch/abc".into();
    w
}

#[tokio::test(start_paused = true)]
async fn lease_is_taken_at_start_and_released_at_the_end() {
    let store = MemoryStore::new();
    let report = runner(slow(2, 1, &store), Duration::from_secs(60))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    let last = store.load(&key()).await.unwrap().unwrap();
    assert_eq!(last.lease, None, "the final checkpoint releases the lease");
    assert_eq!(last.history.len(), 1);
    assert_eq!(last.history[0].outcome, "completed");
    assert_eq!(last.history[0].chunks, 2);
    assert!(last.history[0].ended_ms >= last.history[0].started_ms);
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_held_while_the_job_runs() {
    let store = MemoryStore::new();
    let job = slow(2, 1, &store);
    let seen = job.seen.clone();
    let before = now_ms();
    let report = runner(job, Duration::from_secs(60)).run().await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    let first = seen.lock().unwrap()[0]
        .clone()
        .expect("a checkpoint before the first chunk");
    assert_eq!((first.version, &first.status), (1, &Status::Running));
    let lease = first.lease.expect("a lease while running");
    assert_eq!(lease.owner, first.writer.run_id);
    assert!(
        lease.expires_ms >= before + 59_000,
        "expires {} vs now {before}",
        lease.expires_ms
    );
    assert_eq!(first.history.last().unwrap().outcome, "running");
}

#[tokio::test(start_paused = true)]
async fn a_live_lease_held_elsewhere_refuses_a_second_runner() {
    let store = MemoryStore::new();
    let holder = held_by(&store, elsewhere(), now_ms() + 60_000).await;
    let report = runner(slow(5, 1, &store), Duration::from_secs(60))
        .run()
        .await;
    assert_eq!(report.code(), 73, "{:?}", report.outcome);
    let err = report.error().unwrap();
    assert!(matches!(err, Error::Held { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("ip-10-0-0-7") && text.contains("task/batch/abc"),
        "{text}"
    );
    assert!(text.contains(&holder.writer.run_id.to_string()), "{text}");
    assert_eq!(
        store.load(&key()).await.unwrap().unwrap(),
        holder,
        "the store was changed"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_taken_over_and_the_dead_run_is_recorded() {
    let store = MemoryStore::new();
    let holder = held_by(&store, elsewhere(), now_ms() - 1).await;
    let report = runner(slow(5, 1, &store), Duration::from_secs(60))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    assert_eq!(report.stats.chunks, 3, "resumes at the holder's cursor 2");
    let last = store.load(&key()).await.unwrap().unwrap();
    let runs: Vec<_> = last
        .history
        .iter()
        .map(|r| (r.run_id, r.outcome.as_str()))
        .collect();
    assert_eq!(runs[0], (holder.writer.run_id, "killed"));
    assert_eq!(runs[1].1, "completed");
}

#[tokio::test(start_paused = true)]
async fn a_holder_on_this_host_whose_process_is_gone_is_taken_over_at_once() {
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    let mut writer = Writer::this_process();
    writer.pid = dead.id();
    let store = MemoryStore::new();
    held_by(&store, writer, now_ms() + 60_000).await;
    let report = runner(slow(5, 1, &store), Duration::from_secs(60))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
}

#[tokio::test(start_paused = true)]
async fn a_second_runner_in_the_same_process_is_refused_while_the_first_runs() {
    let store = MemoryStore::new();
    let first = tokio::spawn(runner(slow(5, 1, &store), Duration::from_secs(60)).run());
    // Let the first take its lease and start its first chunk.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = runner(slow(5, 1, &store), Duration::from_secs(60))
        .run()
        .await;
    assert_eq!(second.code(), 73, "{:?}", second.outcome);
    assert!(
        matches!(second.error(), Some(Error::Held { .. })),
        "{:?}",
        second.outcome
    );
    let first = first.await.unwrap();
    assert!(first.is_complete(), "{:?}", first.outcome);
    assert_eq!(first.stats.chunks, 5);
}

#[tokio::test(start_paused = true)]
async fn a_previous_incarnation_with_our_pid_is_taken_over_at_once() {
    // PID 1 of a restarted container: same host, namespace and pid, another run.
    let store = MemoryStore::new();
    held_by(&store, Writer::this_process(), now_ms() + 60_000).await;
    let report = runner(slow(5, 1, &store), Duration::from_secs(60))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_renewed_during_a_long_chunk() {
    let store = MemoryStore::new();
    // One 10 s chunk, a 3 s lease: renewed every second.
    let report = runner(slow(1, 10, &store), Duration::from_secs(3))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    let last = store.load(&key()).await.unwrap().unwrap();
    // 1 (start) + 9 or 10 renewals + 1 (final).
    assert!(
        (11..=12).contains(&last.version),
        "version {}",
        last.version
    );
}

#[tokio::test(start_paused = true)]
async fn losing_the_lease_stops_the_run_at_once_without_writing() {
    let store = MemoryStore::new();
    let intruder = {
        let store = store.clone();
        async move {
            // While the 60 s chunk runs, another runner takes the job over.
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            let mut theirs = store.load(&key()).await.unwrap().unwrap();
            let expected = theirs.version;
            theirs.version += 1;
            theirs.writer = elsewhere();
            theirs.status = Status::Running;
            store.save(&theirs, Some(expected)).await.unwrap();
            theirs
        }
    };
    let intruder = tokio::spawn(intruder);
    let started = tokio::time::Instant::now();
    let report = runner(slow(3, 60, &store), Duration::from_secs(3))
        .run()
        .await;
    let theirs = intruder.await.unwrap();
    assert_eq!(report.code(), 73, "{:?}", report.outcome);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        store.load(&key()).await.unwrap().unwrap(),
        theirs,
        "the fenced runner wrote"
    );
}

#[tokio::test(start_paused = true)]
async fn a_holder_in_another_pid_namespace_is_not_presumed_dead() {
    // Same host name (host networking), another PID namespace: its pid means
    // nothing here, so the runner waits for the lease.
    let mut writer = Writer::this_process();
    writer.pid = 1;
    writer.pid_namespace = writer.pid_namespace.wrapping_add(1);
    let store = MemoryStore::new();
    held_by(&store, writer, now_ms() + 60_000).await;
    let report = runner(slow(5, 1, &store), Duration::from_secs(60))
        .run()
        .await;
    assert_eq!(report.code(), 73, "{:?}", report.outcome);
}

/// A MemoryStore whose `stall_at`-th write (save or renewal) misbehaves.
#[derive(Debug, Clone)]
struct Stalling {
    inner: MemoryStore,
    writes: Arc<Mutex<u64>>,
    stall_at: u64,
    how: Misbehave,
    /// A write held back by `LandLate`, applied before the next one.
    late: Arc<Mutex<Option<LateWrite>>>,
}

/// A checkpoint and the version it expects to replace.
type LateWrite = (Checkpoint, Option<u64>);

#[derive(Debug, Clone, Copy)]
enum Misbehave {
    /// Waits this long, then writes.
    StallBefore(Duration),
    /// Writes, then waits this long before answering.
    StallAfter(Duration),
    /// Writes, then answers with an I/O error (the answer was lost).
    LoseAnswer,
    /// Never answers; the write lands later, just before the next one (a
    /// request already on its way when the runner gave up on it).
    LandLate,
}

impl Stalling {
    fn new(inner: &MemoryStore, stall_at: u64, how: Misbehave) -> Self {
        Self {
            inner: inner.clone(),
            writes: Arc::default(),
            stall_at,
            how,
            late: Arc::default(),
        }
    }
}

#[async_trait]
impl CheckpointStore for Stalling {
    fn location(&self) -> String {
        "stalling://".into()
    }

    async fn load(&self, key: &JobKey) -> Result<Option<Checkpoint>, spotbatch::StoreError> {
        self.inner.load(key).await
    }

    async fn save(
        &self,
        c: &Checkpoint,
        expected: Option<u64>,
    ) -> Result<(), spotbatch::StoreError> {
        let n = {
            let mut writes = self.writes.lock().unwrap();
            *writes += 1;
            *writes
        };
        let late = self.late.lock().unwrap().take();
        if let Some((late, expected)) = late {
            let _ = self.inner.save(&late, expected).await;
        }
        if n != self.stall_at {
            return self.inner.save(c, expected).await;
        }
        match self.how {
            Misbehave::StallBefore(d) => {
                tokio::time::sleep(d).await;
                self.inner.save(c, expected).await
            }
            Misbehave::StallAfter(d) => {
                self.inner.save(c, expected).await?;
                tokio::time::sleep(d).await;
                Ok(())
            }
            Misbehave::LandLate => {
                *self.late.lock().unwrap() = Some((c.clone(), expected));
                std::future::pending().await
            }
            Misbehave::LoseAnswer => {
                self.inner.save(c, expected).await?;
                Err(spotbatch::StoreError::Io {
                    store: self.location(),
                    key: c.job.to_string(),
                    operation: "save",
                    source: "connection reset after the write".into(),
                })
            }
        }
    }

    async fn list(&self) -> Result<Vec<spotbatch::Listing>, spotbatch::StoreError> {
        self.inner.list().await
    }

    async fn delete(&self, key: &JobKey, expected: u64) -> Result<(), spotbatch::StoreError> {
        self.inner.delete(key, expected).await
    }
}

/// `runner` with a 3 s lease, on a store whose second write (the first
/// renewal, at 1 s) misbehaves.
fn stalled(job: Slow, how: Misbehave) -> Runner<Slow> {
    let store = Stalling::new(&job.store, 2, how);
    runner(job, Duration::from_secs(3)).store(store)
}

#[tokio::test(start_paused = true)]
async fn a_slow_renewal_does_not_hold_up_the_chunk() {
    // Lease 3 s: the renewal at 1 s (write 2) takes 5 s; the chunk ends at 2 s.
    let inner = MemoryStore::new();
    let job = slow(1, 2, &inner);
    let ended = Arc::clone(&job.ended);
    let started = tokio::time::Instant::now();
    let report = stalled(job, Misbehave::StallBefore(Duration::from_secs(5)))
        .run()
        .await;
    assert!(report.is_complete(), "{:?}", report.outcome);
    let ended = ended.lock().unwrap()[0] - started;
    assert!(
        ended < Duration::from_millis(2_100),
        "the chunk waited for the renewal: ended after {ended:?}"
    );
    let last = inner.load(&key()).await.unwrap().unwrap();
    assert_eq!(
        (last.version, last.lease),
        (3, None),
        "begin, renewal, final"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_renewal_gives_way_at_the_drain_deadline() {
    // The renewal at 1 s hangs, before or after it reached the store; a
    // SIGTERM-like stop at 1.5 s with a 10 s grace.
    for (how, landed) in [
        (Misbehave::StallBefore(Duration::from_secs(3_600)), false),
        (Misbehave::StallAfter(Duration::from_secs(3_600)), true),
        (Misbehave::LandLate, true),
    ] {
        let inner = MemoryStore::new();
        let started = tokio::time::Instant::now();
        let report = stalled(slow(1, 600, &inner), how)
            .grace(Duration::from_secs(10))
            .stop_on("test", tokio::time::sleep(Duration::from_millis(1_500)))
            .run()
            .await;
        let took = started.elapsed();
        assert!(
            matches!(report.outcome, spotbatch::Outcome::Interrupted(_)),
            "{how:?}: {:?}",
            report.outcome
        );
        assert!(took < Duration::from_secs(10), "{how:?}: took {took:?}");
        let last = inner.load(&key()).await.unwrap().unwrap();
        assert_eq!(last.lease, None, "{how:?}: the lease was left held");
        assert_eq!(Codec::Bincode.decode::<u64>(&last.cursor).unwrap(), 0);
        assert!(
            matches!(last.status, Status::Interrupted { .. }),
            "{how:?}: {}",
            last.status
        );
        // Begin, (the renewal,) the final checkpoint.
        assert_eq!(last.version, if landed { 3 } else { 2 }, "{how:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_the_lease_is_taken_records_the_interruption_it_writes() {
    // The first write (taking the lease) lands but its answer never comes;
    // a SIGTERM-like stop at 100 ms with a 10 s grace gives up on it at the
    // drain deadline, and the run's end is recorded over it.
    let inner = MemoryStore::new();
    let store = Stalling::new(&inner, 1, Misbehave::StallAfter(Duration::from_secs(3_600)));
    let report = runner(slow(5, 1, &inner), Duration::from_secs(60))
        .store(store)
        .grace(Duration::from_secs(10))
        .stop_on("test", tokio::time::sleep(Duration::from_millis(100)))
        .run()
        .await;
    assert!(
        matches!(report.outcome, spotbatch::Outcome::Interrupted(_)),
        "{:?}",
        report.outcome
    );
    let last = inner.load(&key()).await.unwrap().unwrap();
    assert_eq!(
        (last.version, last.lease),
        (2, None),
        "the lease, then its release"
    );
    assert!(
        matches!(last.status, Status::Interrupted { .. }),
        "{}",
        last.status
    );
    assert_eq!(last.history[0].outcome, "interrupted (stop request: test)");
    assert_eq!(
        (last.counters.runs, last.counters.interruptions),
        (1, 1),
        "a run recorded as interrupted counts as an interruption"
    );
}

/// Fails in `resume`, or in the `fail_flush`-th `flush`.
struct Faulty {
    fail_resume: bool,
    fail_flush: u64,
    flushes: u64,
}

#[async_trait]
impl Job for Faulty {
    type Cursor = u64;
    type State = ();

    async fn resume(&mut self, _: &u64, _: &()) -> Result<()> {
        if self.fail_resume {
            return Err("the source table is gone".into());
        }
        Ok(())
    }

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < 10).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(&mut self, _: &Chunk<u64>, _: &mut (), _: &ChunkContext) -> Result<()> {
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        self.flushes += 1;
        if self.flushes == self.fail_flush {
            return Err("disk full".into());
        }
        Ok(())
    }
}

/// Runs `job` to its failure; returns the checkpoint it left and its failure message.
async fn run_to_failure(job: Faulty) -> (Checkpoint, String) {
    let store = MemoryStore::new();
    run_to_failure_on(job, &store, store.clone()).await
}

/// Runs `job` to its failure on `through`, a store over `store`.
async fn run_to_failure_on(
    job: Faulty,
    store: &MemoryStore,
    through: impl CheckpointStore + 'static,
) -> (Checkpoint, String) {
    let report = Runner::new("leased", job)
        .store(through)
        .signals(&[])
        .checkpoint(spotbatch::Every::chunks(2))
        .lease(Duration::from_secs(60))
        .run()
        .await;
    assert_eq!(report.code(), 1, "{:?}", report.outcome);
    let last = store.load(&key()).await.unwrap().unwrap();
    assert_eq!(last.lease, None, "the lease was left held");
    let Status::Failed { message } = last.status.clone() else {
        panic!("status {}", last.status);
    };
    let run = &last.history[0];
    assert!(
        run.outcome.starts_with("failed") && run.ended_ms > 0,
        "{run:?}"
    );
    (last, message)
}

#[tokio::test(start_paused = true)]
async fn a_failed_resume_records_the_failure_and_releases_the_lease() {
    let (_, message) = run_to_failure(Faulty {
        fail_resume: true,
        fail_flush: 0,
        flushes: 0,
    })
    .await;
    assert!(
        message.contains("resume") && message.contains("source table"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_flush_records_the_failure_on_the_last_checkpoint() {
    // Flush 1 (after chunk 2) succeeds; flush 2 (after chunk 4) fails.
    let (last, message) = run_to_failure(Faulty {
        fail_resume: false,
        fail_flush: 2,
        flushes: 0,
    })
    .await;
    assert!(message.contains("disk full"), "{message}");
    assert_eq!(
        Codec::Bincode.decode::<u64>(&last.cursor).unwrap(),
        2,
        "the failure is recorded on the last durable cursor"
    );
    assert_eq!(last.counters.chunks, 2);
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_an_unconfirmed_save_keeps_that_save_s_cursor() {
    // Write 2, the checkpoint at cursor 2, lands but its answer is lost; the
    // flush before the checkpoint at cursor 4 fails. The failure must be
    // recorded on cursor 2, not on the cursor of the last confirmed save (0):
    // moving the cursor back would redo work that is already done.
    let store = MemoryStore::new();
    let through = Stalling::new(&store, 2, Misbehave::LoseAnswer);
    let (last, message) = run_to_failure_on(
        Faulty {
            fail_resume: false,
            fail_flush: 2,
            flushes: 0,
        },
        &store,
        through,
    )
    .await;
    assert!(message.contains("disk full"), "{message}");
    assert_eq!(Codec::Bincode.decode::<u64>(&last.cursor).unwrap(), 2);
    assert_eq!((last.version, last.counters.chunks), (3, 2));
}
