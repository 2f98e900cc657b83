//! Helpers for the S3 store's tests: the SeaweedFS server that scripts/test
//! started, private servers a test can stop and start, fresh buckets, and the
//! example binaries.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spotbatch::s3::{S3Store, S3StoreBuilder};

/// The S3 endpoint scripts/services/s3.sh started. Panics when it is not set:
/// these tests never skip for want of a server.
pub fn endpoint() -> String {
    match std::env::var("SPOTBATCH_TEST_S3_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => endpoint,
        _ => panic!(
            "SPOTBATCH_TEST_S3_ENDPOINT is not set: run these tests with scripts/test, \
             which starts SeaweedFS (scripts/services/s3.sh) and exports it"
        ),
    }
}

/// The `weed` binary scripts/services/s3.sh installed.
pub fn weed_bin() -> PathBuf {
    match std::env::var_os("SPOTBATCH_TEST_WEED_BIN") {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => panic!(
            "SPOTBATCH_TEST_WEED_BIN is not set: run these tests with scripts/test \
             (scripts/services/s3.sh installs SeaweedFS and exports it)"
        ),
    }
}

fn credentials() -> (String, String) {
    let get = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run these tests with scripts/test (scripts/services/s3.sh)")
        })
    };
    (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY"))
}

/// A builder for a store on `endpoint`, path-style, with short retries.
pub fn builder(endpoint: &str, bucket: &str, prefix: &str) -> S3StoreBuilder {
    S3StoreBuilder::new(bucket, prefix)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .region("us-east-1")
        .initial_backoff(Duration::from_millis(50))
}

/// A store on `endpoint` in `bucket` under `prefix`.
pub async fn store_on(endpoint: &str, bucket: &str, prefix: &str) -> S3Store {
    builder(endpoint, bucket, prefix)
        .build()
        .await
        .expect("build store")
}

/// A bucket no other test uses, on `endpoint`.
pub async fn fresh_bucket_on(endpoint: &str) -> String {
    let bucket = format!("sbt-{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
    let store = store_on(endpoint, &bucket, "").await;
    store
        .client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "create bucket {bucket} on {endpoint}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        });
    bucket
}

/// A store in a fresh bucket on the shared server.
pub async fn fresh_store(prefix: &str) -> S3Store {
    let endpoint = endpoint();
    let bucket = fresh_bucket_on(&endpoint).await;
    store_on(&endpoint, &bucket, prefix).await
}

/// A fresh bucket on the shared server, and a client for it.
pub struct Bucket {
    pub client: spotbatch::s3::aws_sdk_s3::Client,
    pub name: String,
}

impl Bucket {
    pub async fn fresh() -> Self {
        let endpoint = endpoint();
        let name = fresh_bucket_on(&endpoint).await;
        let client = builder(&endpoint, &name, "")
            .client()
            .await
            .expect("an S3 client for the test bucket");
        Self { client, name }
    }
}

/// A SeaweedFS server of one test's own, on free ports, that the test can
/// stop (SIGKILL, like a crash) and start again on the same data.
pub struct PrivateServer {
    child: Option<Child>,
    data: tempfile::TempDir,
    ports: [u16; 5],
}

static PORTS_GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn free_ports() -> [u16; 5] {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let mut given = PORTS_GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut ports = [0; 5];
    let mut n = 0;
    while n < 5 {
        let p = fastrand::u16(10_000..20_000);
        if !given.contains(&p) && free(p) && free(p + 10_000) {
            given.insert(p);
            ports[n] = p;
            n += 1;
        }
    }
    ports
}

impl PrivateServer {
    /// Starts a server and waits until its S3 API answers.
    pub async fn start() -> Self {
        let mut server = Self {
            child: None,
            data: tempfile::tempdir().expect("tempdir"),
            ports: free_ports(),
        };
        server.resume().await;
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[4])
    }

    /// Kills the server at once (SIGKILL), as a crash or a lost host would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data; waits until ready.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let [master, volume, filer, admin, s3] = self.ports;
        let (access, secret) = credentials();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("weed.log"))
            .expect("weed log");
        let child = Command::new(weed_bin())
            .arg("mini")
            .arg(format!("-dir={}", self.data.path().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-admin.port={admin}"))
            .arg(format!("-s3.port={s3}"))
            .arg(format!(
                "-filer.localSocket={}",
                self.data.path().join("filer.sock").display()
            ))
            .args([
                "-s3.port.lance=0",
                "-s3.port.iceberg=0",
                "-admin.ui=false",
                "-webdav=false",
                "-master.telemetry=false",
                // As scripts/services/s3.sh: writes must not depend on free disk.
                "-master.volumeSizeLimitMB=16",
                "-volume.max=1000",
            ])
            .env("AWS_ACCESS_KEY_ID", access)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn weed mini");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        let store = builder(&self.endpoint(), "probe-bucket", "")
            .max_attempts(1)
            .attempt_timeout(Duration::from_secs(2))
            .build()
            .await
            .expect("probe store");
        loop {
            if store.client().list_buckets().send().await.is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("weed mini exited: {status}\n{}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "SeaweedFS at {} not ready in 60 s\n{}",
                self.endpoint(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("weed.log")).unwrap_or_default()
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The environment an example needs to reach `endpoint` (the store reads it).
pub fn s3_env(cmd: &mut Command, endpoint: &str) {
    cmd.env("AWS_ENDPOINT_URL_S3", endpoint)
        .env("SPOTBATCH_S3_FORCE_PATH_STYLE", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env_remove("SPOTBATCH_STORE")
        .env_remove("SPOTBATCH_S3_SSE")
        .env_remove("SPOTBATCH_S3_SSE_KMS_KEY_ID");
}

/// The quickstart (with an S3 store) in its own temporary directory.
pub struct Quickstart {
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub store_url: String,
    pub job: String,
    pub records: u64,
    pub chunk: u64,
    pub work_us: u64,
    pub grace_secs: f64,
    pub every_chunks: u64,
    pub every_secs: u64,
}

impl Quickstart {
    pub fn new(endpoint: &str, bucket: &str, records: u64, chunk: u64, work_us: u64) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            endpoint: endpoint.to_owned(),
            store_url: format!("s3://{bucket}/ckpt"),
            job: "e2e".to_owned(),
            records,
            chunk,
            work_us,
            grace_secs: 30.0,
            every_chunks: 100,
            every_secs: 5,
        }
    }

    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out.txt")
    }

    pub fn audit(&self) -> PathBuf {
        self.dir.path().join("audit.txt")
    }

    pub fn command(&self) -> Command {
        let mut cmd = example_command("quickstart");
        cmd.arg("--records")
            .arg(self.records.to_string())
            .arg("--chunk")
            .arg(self.chunk.to_string())
            .arg("--work-us")
            .arg(self.work_us.to_string())
            .arg("--grace")
            .arg(self.grace_secs.to_string())
            .arg("--every-chunks")
            .arg(self.every_chunks.to_string())
            .arg("--every-secs")
            .arg(self.every_secs.to_string())
            .arg("--out")
            .arg(self.out())
            .arg("--audit")
            .arg(self.audit())
            .arg("--store")
            .arg(&self.store_url)
            .arg("--job")
            .arg(&self.job)
            .arg("--interrupted-exit-code")
            .arg("75");
        s3_env(&mut cmd, &self.endpoint);
        cmd
    }

    pub fn spawn(&self) -> Child {
        self.command().spawn().expect("spawn quickstart")
    }

    pub fn run(&self) -> Output {
        self.command().output().expect("run quickstart")
    }

    /// Chunk starts processed, in the order the runs did them.
    pub fn audited_starts(&self) -> Vec<u64> {
        let text = std::fs::read_to_string(self.audit()).unwrap_or_default();
        text.lines()
            .map(|l| l.split(' ').next().expect("start").parse().expect("number"))
            .collect()
    }
}

/// Waits (without blocking the runtime's threads for long) until `cond` holds.
pub async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keeps reading a child's stderr in the background, so a test can wait for a
/// line while the process runs.
pub struct Tail {
    text: std::sync::Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Tail {
    pub fn of(child: &mut Child) -> Self {
        let err = child.stderr.take().expect("piped stderr");
        let text = std::sync::Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let mut t = sink.lock().unwrap_or_else(|e| e.into_inner());
                t.push_str(&line);
                t.push('\n');
            }
        });
        Self {
            text,
            reader: Some(reader),
        }
    }

    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }

    /// Everything, once the process has exited.
    pub fn into_text(mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.text()
    }
}

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use spotbatch_test_support::{
    example_bin, example_command, finish, signal, stderr, wait_within,
};
