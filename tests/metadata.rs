//! The EC2 instance metadata (IMDSv2) and ECS task metadata clients (feature
//! `aws`), against local replicas on 127.0.0.1 that answer as AWS documents:
//!
//! - IMDSv2: "Use the Instance Metadata Service to access instance metadata"
//!   (docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html):
//!   `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`, the
//!   answered with the token and its TTL in the same header, the token in
//!   `X-aws-ec2-metadata-token`, 401 for a missing or expired token.
//! - "Spot Instance interruption notices" (.../spot-instance-termination-notices.html):
//!   `/latest/meta-data/spot/instance-action` is 404 until a notice, then
//!   `{"action": "terminate", "time": "2017-09-18T08:22:00Z"}`.
//! - "EC2 instance rebalance recommendations" (.../rebalance-recommendations.html):
//!   `/latest/meta-data/events/recommendations/rebalance`, `{"noticeTime": "…"}`.
//! - "Amazon ECS task metadata endpoint version 4" (AmazonECS/latest/developerguide/task-metadata-endpoint-v4.html):
//!   `${ECS_CONTAINER_METADATA_URI_V4}/task`, the documented example response.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{stderr, Quickstart};
use spotbatch::aws::Ec2SpotNotices;
use spotbatch::prelude::*;
use spotbatch::{
    CheckpointPolicy, CheckpointStore, InterruptSource, JobKey, MemoryStore, Status, StopRequest,
    StopSource,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: status, extra headers, body.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

type Handler = Arc<dyn Fn(&Request) -> Option<Reply> + Send + Sync>;

/// Serves `handler` on 127.0.0.1; `None` from the handler means: never answer.
async fn serve(handler: Handler) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buf = [0u8; 1024];
                while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => raw.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&raw).into_owned();
                let mut lines = text.split("\r\n");
                let mut first = lines.next().unwrap_or("").split_whitespace();
                let request = Request {
                    method: first.next().unwrap_or("").to_owned(),
                    path: first.next().unwrap_or("").to_owned(),
                    headers: lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                        .collect(),
                };
                let Some(Reply {
                    status,
                    headers,
                    body,
                }) = handler(&request)
                else {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                };
                let headers: String = headers
                    .iter()
                    .map(|(name, value)| format!("{name}: {value}\r\n"))
                    .collect();
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// An IMDSv2 replica. The token answer carries its TTL in
/// `X-aws-ec2-metadata-token-ttl-seconds`, as IMDS does; tokens stop being
/// valid after three uses, long before that TTL (401, as IMDS answers a token
/// it no longer honours).
#[derive(Default)]
struct Imds {
    notice: AtomicBool,
    /// The notice's `time` (default `2026-11-24T15:32:45Z`).
    notice_time: Mutex<Option<String>>,
    rebalance: AtomicBool,
    tokens_issued: AtomicUsize,
    valid: Mutex<Option<(String, usize)>>,
    unauthorized: AtomicUsize,
}

impl Imds {
    fn handle(&self, r: &Request) -> Reply {
        if r.method == "PUT" && r.path == "/latest/api/token" {
            let Some(ttl) = r.header("X-aws-ec2-metadata-token-ttl-seconds") else {
                return Reply::new(400, "");
            };
            let n = self.tokens_issued.fetch_add(1, Ordering::SeqCst);
            let token = format!("token-{n}");
            *self.valid.lock().unwrap() = Some((token.clone(), 0));
            let mut reply = Reply::new(200, token);
            reply
                .headers
                .push(("X-aws-ec2-metadata-token-ttl-seconds", ttl.to_owned()));
            return reply;
        }
        let mut valid = self.valid.lock().unwrap();
        let authorized = match (&mut *valid, r.header("X-aws-ec2-metadata-token")) {
            (Some((token, uses)), Some(given)) if token == given && *uses < 3 => {
                *uses += 1;
                true
            }
            _ => false,
        };
        if !authorized {
            self.unauthorized.fetch_add(1, Ordering::SeqCst);
            return Reply::new(401, "");
        }
        match r.path.as_str() {
            "/latest/meta-data/spot/instance-action" if self.notice.load(Ordering::SeqCst) => {
                let time = self.notice_time.lock().unwrap().clone();
                let time = time.as_deref().unwrap_or("2026-11-24T15:32:45Z");
                Reply::new(
                    200,
                    format!(r#"{{"action": "terminate", "time": "{time}"}}"#),
                )
            }
            "/latest/meta-data/events/recommendations/rebalance"
                if self.rebalance.load(Ordering::SeqCst) =>
            {
                Reply::new(200, r#"{"noticeTime": "2026-11-24T15:30:00Z"}"#)
            }
            _ => Reply::new(404, ""),
        }
    }
}

async fn imds() -> (Arc<Imds>, String) {
    let state = Arc::new(Imds::default());
    let s = state.clone();
    let addr = serve(Arc::new(move |r| Some(s.handle(r)))).await;
    (state, format!("http://{addr}"))
}

/// 30 chunks of 100 ms.
struct Steady;

#[async_trait]
impl Job for Steady {
    type Cursor = u64;
    type State = ();

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < 30).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(&mut self, _: &Chunk<u64>, _: &mut (), _: &ChunkContext) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }
}

#[tokio::test]
async fn a_spot_notice_mid_run_drains_the_job_like_sigterm() {
    let (state, url) = imds().await;
    let flag = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        flag.notice.store(true, Ordering::SeqCst);
    });
    let store = MemoryStore::new();
    let notices = Ec2SpotNotices::new()
        .endpoint(&url)
        .interval(Duration::from_millis(50));
    let report = Runner::new("spot", Steady)
        .store(store.clone())
        .signals(&[])
        .checkpoint(CheckpointPolicy::at_exit_only())
        .stop_source(notices)
        .run()
        .await;
    let Outcome::Interrupted(InterruptSource::Notice { from, detail }) = &report.outcome else {
        panic!("{:?}", report.outcome);
    };
    assert_eq!(from, "EC2 spot");
    assert_eq!(detail, "terminate at 2026-11-24T15:32:45Z");
    assert!(
        (3..30).contains(&report.stats.chunks),
        "{} chunks",
        report.stats.chunks
    );
    let ckpt = store
        .load(&JobKey::new("spot").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ckpt.status,
        Status::Interrupted {
            source: "EC2 spot notice: terminate at 2026-11-24T15:32:45Z".into()
        }
    );
    assert!(
        state.unauthorized.load(Ordering::SeqCst) >= 1,
        "tokens never expired"
    );
    assert!(
        state.tokens_issued.load(Ordering::SeqCst) >= 2,
        "the expired token was not renewed"
    );
}

/// `at` as IMDS writes a notice's time: RFC 3339, UTC, whole seconds.
fn rfc3339(at: SystemTime) -> String {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

#[test]
fn rfc3339_is_as_imds_writes_it() {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_505_722_920);
    assert_eq!(rfc3339(at), "2017-09-18T08:22:00Z");
}

/// Chunks of 20 s that give up at the drain deadline.
struct Long;

#[async_trait]
impl Job for Long {
    type Cursor = u64;
    type State = ();

    async fn next_chunk(&mut self, at: &u64) -> Result<Option<Chunk<u64>>> {
        Ok((*at < 10).then(|| Chunk::between(*at, *at + 1)))
    }

    async fn process(&mut self, _: &Chunk<u64>, _: &mut (), ctx: &ChunkContext) -> Result<()> {
        ctx.cancellable(tokio::time::sleep(Duration::from_secs(20)))
            .await?;
        Ok(())
    }
}

/// The notice's `time` is the stop's deadline: with a grace period far
/// longer than the notice gives, the run still ends before that time, its
/// final checkpoint saved, the chunk in hand given up a reserve before it.
#[tokio::test]
async fn a_spot_notice_brings_its_deadline() {
    let (state, url) = imds().await;
    let terminate_at = SystemTime::now() + Duration::from_secs(4);
    *state.notice_time.lock().unwrap() = Some(rfc3339(terminate_at));
    state.notice.store(true, Ordering::SeqCst);
    let store = MemoryStore::new();
    let notices = Ec2SpotNotices::new()
        .endpoint(&url)
        .interval(Duration::from_millis(50));
    let report = Runner::new("spot-deadline", Long)
        .store(store.clone())
        .signals(&[])
        .grace(Duration::from_secs(60))
        .checkpoint_reserve(Duration::from_secs(2))
        .stop_source(notices)
        .run()
        .await;
    let ended = SystemTime::now();
    assert!(
        matches!(
            &report.outcome,
            Outcome::Interrupted(InterruptSource::Notice { .. })
        ),
        "{:?}",
        report.outcome
    );
    assert!(
        ended < terminate_at,
        "the run ended {:?} after the notice's time",
        ended.duration_since(terminate_at).unwrap_or_default()
    );
    assert!(report.stats.abandoned_chunk);
    let ckpt = store
        .load(&JobKey::new("spot-deadline").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ckpt.status, Status::Interrupted { .. }),
        "{}",
        ckpt.status
    );
}

#[tokio::test]
async fn a_rebalance_recommendation_stops_only_when_asked_for() {
    let (state, url) = imds().await;
    state.rebalance.store(true, Ordering::SeqCst);
    let mut with = Ec2SpotNotices::new().endpoint(&url).rebalance(true);
    let notice = tokio::time::timeout(Duration::from_secs(5), with.next())
        .await
        .unwrap();
    assert_eq!(
        notice,
        Some(StopRequest::new(InterruptSource::Notice {
            from: "EC2 rebalance recommendation".into(),
            detail: "issued at 2026-11-24T15:30:00Z".into()
        })),
        "a recommendation sets no deadline"
    );
    assert_eq!(with.next().await, None, "a notice is given once");
    let mut without = Ec2SpotNotices::new()
        .endpoint(&url)
        .interval(Duration::from_millis(20));
    let waited = tokio::time::timeout(Duration::from_millis(300), without.next()).await;
    assert!(
        waited.is_err(),
        "stopped on a rebalance recommendation nobody asked for"
    );
}

/// Collects log lines written while `f` runs.
async fn logs_of<F: std::future::Future>(f: F) -> (F::Output, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let out = f.await;
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

#[tokio::test(flavor = "current_thread")]
async fn no_metadata_service_stops_the_poller_with_one_log_line() {
    // A port with nothing listening: connection refused, as off EC2.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut poller = Ec2SpotNotices::new()
        .endpoint(format!("http://{closed}"))
        .interval(Duration::from_millis(10));
    let (next, logs) =
        logs_of(async { tokio::time::timeout(Duration::from_secs(2), poller.next()).await }).await;
    assert_eq!(next.expect("the poller kept trying"), None);
    let lines: Vec<_> = logs.lines().collect();
    assert_eq!(lines.len(), 1, "{logs}");
    assert!(
        lines[0].contains("no EC2 instance metadata service"),
        "{logs}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_silent_metadata_service_is_given_up_after_the_timeout() {
    let addr = serve(Arc::new(|_| None)).await;
    let mut poller = Ec2SpotNotices::new()
        .endpoint(format!("http://{addr}"))
        .timeout(Duration::from_millis(200));
    let next = tokio::time::timeout(Duration::from_secs(2), poller.next()).await;
    assert_eq!(next.expect("the poller hung"), None);
}

const TASK: &str = r#"{
    "Cluster": "arn:aws:ecs:us-west-2:111122223333:cluster/default",
    "TaskARN": "arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c",
    "Family": "curltest",
    "ServiceName": "MyService",
    "Revision": "26",
    "DesiredStatus": "RUNNING",
    "KnownStatus": "RUNNING",
    "PullStartedAt": "2020-10-02T00:43:06.202617438Z",
    "PullStoppedAt": "2020-10-02T00:43:06.31288465Z",
    "AvailabilityZone": "us-west-2d",
    "VPCID": "vpc-1234567890abcdef0",
    "LaunchType": "EC2",
    "Containers": []
}"#;

#[tokio::test(flavor = "multi_thread")]
async fn on_ecs_the_task_arn_is_the_checkpoints_writer() {
    let addr = serve(Arc::new(|r| {
        (r.method == "GET" && r.path == "/v4/0123abcd/task").then(|| Reply::new(200, TASK))
    }))
    .await;
    let job = Quickstart::new(1_000, 100, 0);
    let out = tokio::task::spawn_blocking(move || {
        let out = job
            .command()
            .env(
                "ECS_CONTAINER_METADATA_URI_V4",
                format!("http://{addr}/v4/0123abcd"),
            )
            .output()
            .unwrap();
        (out, job)
    });
    let (out, job) = out.await.unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("running as an ECS task"), "{err}");
    assert!(
        err.contains("cluster=arn:aws:ecs:us-west-2:111122223333:cluster/default"),
        "{err}"
    );
    let ckpt = job.checkpoint().unwrap();
    let arn = "arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c";
    assert_eq!(ckpt.writer.task, arn);
    assert_eq!(ckpt.history.last().unwrap().task, arn);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_ecs_endpoint_is_a_warning_not_a_failure() {
    let addr = serve(Arc::new(|_| Some(Reply::new(500, "oops")))).await;
    let job = Quickstart::new(1_000, 100, 0);
    let (out, job) = tokio::task::spawn_blocking(move || {
        let out = job
            .command()
            .env(
                "ECS_CONTAINER_METADATA_URI_V4",
                format!("http://{addr}/v4/x"),
            )
            .output()
            .unwrap();
        (out, job)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ECS task metadata unreadable"),
        "{}",
        stderr(&out)
    );
    assert_eq!(job.checkpoint().unwrap().writer.task, "");
}

/// A stop while the runner reads the ECS task's identity (here from an
/// endpoint that never answers, which it would wait 2 s for) ends the run
/// at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_while_reading_the_ecs_identity_ends_the_run_at_once() {
    let addr = serve(Arc::new(|_| None)).await;
    let job = Quickstart::new(1_000, 100, 0);
    let (status, took, err) = tokio::task::spawn_blocking(move || {
        let child = job
            .command()
            .env(
                "ECS_CONTAINER_METADATA_URI_V4",
                format!("http://{addr}/v4/silent"),
            )
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        common::signal(&child, libc::SIGTERM);
        common::finish(child, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(took < Duration::from_millis(800), "took {took:?}\n{err}");
    assert!(
        err.contains("stop requested before the first chunk"),
        "{err}"
    );
}
