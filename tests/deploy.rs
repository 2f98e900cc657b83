//! The deploy kit (`deploy/`) agrees with itself and with the runner.
//!
//! Reads the real files: every JSON and YAML file must parse, and the values
//! that decide whether an interrupted job resumes must line up:
//!
//! - the interrupted exit code that AWS Batch retries on and that the
//!   Kubernetes `podFailurePolicy` ignores is [`ExitCodes::RETRY_ME`] (75),
//!   and the container command passes exactly that code to the runner; both
//!   also retry 143, a SIGTERM before the job installed its handlers;
//! - every `--grace` given to the job is strictly less than the time the
//!   platform waits between SIGTERM and SIGKILL (ECS `stopTimeout`, Batch's
//!   30 s, `terminationGracePeriodSeconds`), and within a few seconds of it;
//! - ECS `stopTimeout` is at most 120 s (the Fargate maximum), and the
//!   Terraform's `stop_timeout` is the task definition's;
//! - the Dockerfile builds the job with the `s3` feature, and its ENTRYPOINT
//!   is exec form, so the job gets SIGTERM;
//! - every command line in the kit is accepted by the quickstart's own flags.

// Test code: helpers are `pub` for the test's modules, and a failed unwrap is a failed test.
#![allow(unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::Value;
use spotbatch::ExitCodes;

// The quickstart's real flag parser (the image runs this job).
#[allow(dead_code)]
#[path = "../examples/quickstart.rs"]
mod quickstart;

// The partitioned example's real flag parser (the `partitioned` image runs it).
#[allow(dead_code)]
#[path = "../examples/partitioned.rs"]
mod partitioned;

/// The most Fargate allows for a container's `stopTimeout`.
const FARGATE_MAX_STOP_TIMEOUT: f64 = 120.0;
/// SIGTERM to SIGKILL for an AWS Batch job whose container sets no stop
/// timeout (`containerProperties` has none): 30 s (Batch job timeouts page;
/// ECS `stopTimeout` default).
const BATCH_STOP_TIMEOUT: f64 = 30.0;
/// "A few seconds" under the platform's stop timeout: enough for process
/// exit, not so much that the drain loses time it could use.
const MARGIN: std::ops::RangeInclusive<f64> = 1.0..=10.0;

// ---------------------------------------------------------------------------
// Reading the kit
// ---------------------------------------------------------------------------

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(rel: &str) -> String {
    let path = deploy_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    parse_yaml(&read(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

/// YAML to a JSON value.
///
/// Until a YAML crate is a dev-dependency, [`mini_yaml`] (the block-style
/// subset the kit uses; it refuses anything else) reads it. With
/// `serde_norway` in `[dev-dependencies]`, this is
/// `serde_norway::from_str(text).map_err(|e| e.to_string())`.
fn parse_yaml(text: &str) -> Result<Value, String> {
    serde_norway::from_str(text).map_err(|e| e.to_string())
}

/// Every file under `deploy/` whose name ends with one of `exts`, sorted.
fn files(exts: &[&str]) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, exts: &[&str], out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if !name.starts_with('.') {
                    walk(&path, root, exts, out);
                }
            } else if exts.iter().any(|ext| name.ends_with(ext)) {
                let rel = path.strip_prefix(root).expect("under deploy/");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &deploy_dir(), exts, &mut out);
    out.sort();
    out
}

/// `value[path...]`, or a panic naming the file and the path.
fn at<'a>(file: &str, value: &'a Value, path: &[&str]) -> &'a Value {
    let mut v = value;
    for (i, key) in path.iter().enumerate() {
        v = match key.parse::<usize>() {
            Ok(n) => v.get(n),
            Err(_) => v.get(*key),
        }
        .unwrap_or_else(|| panic!("deploy/{file}: no {}", path[..=i].join(".")));
    }
    v
}

fn strings(file: &str, value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("deploy/{file}: expected a list of strings, found {value}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("deploy/{file}: expected a string, found {s}"))
                .to_owned()
        })
        .collect()
}

fn number(file: &str, value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("deploy/{file}: expected a number, found {value}"))
}

/// The value of `--name` (or `--name=value`) in a command line; `None` when
/// absent; a panic when given twice.
fn flag<'a>(file: &str, args: &'a [String], name: &str) -> Option<&'a str> {
    let long = format!("--{name}");
    let eq = format!("--{name}=");
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        let value = if args[i] == long {
            i += 1;
            Some(
                args.get(i)
                    .unwrap_or_else(|| panic!("deploy/{file}: {long} has no value"))
                    .as_str(),
            )
        } else {
            args[i].strip_prefix(&eq)
        };
        if let Some(value) = value {
            assert!(found.is_none(), "deploy/{file}: {long} given twice");
            found = Some(value);
        }
        i += 1;
    }
    found
}

/// The command line must be one the quickstart accepts (flag names, value
/// types: `--grace` seconds, `--interrupted-exit-code` 0 to 255).
fn assert_quickstart_accepts(file: &str, args: &[String]) {
    let argv = std::iter::once("quickstart").chain(args.iter().map(String::as_str));
    if let Err(e) = quickstart::Args::try_parse_from(argv) {
        panic!("deploy/{file}: the quickstart refuses {args:?}:\n{e}");
    }
}

/// `--grace` must be strictly less than the platform's stop timeout, by a few
/// seconds. Returns the grace.
fn assert_grace_fits(file: &str, args: &[String], stop_timeout: f64, platform: &str) -> f64 {
    let grace: f64 = flag(file, args, "grace")
        .unwrap_or_else(|| {
            panic!(
                "deploy/{file}: no --grace (the runner's default 30 s knows nothing of {platform})"
            )
        })
        .parse()
        .unwrap_or_else(|e| panic!("deploy/{file}: --grace: {e}"));
    assert!(
        grace < stop_timeout,
        "deploy/{file}: --grace {grace} is not under {platform} {stop_timeout}: \
         the job would be SIGKILLed before its final checkpoint"
    );
    assert!(
        MARGIN.contains(&(stop_timeout - grace)),
        "deploy/{file}: --grace {grace} is {} s under {platform} {stop_timeout}; \
         keep it {}..={} s under",
        stop_timeout - grace,
        MARGIN.start(),
        MARGIN.end()
    );
    grace
}

/// `--interrupted-exit-code` as given, if at all.
fn interrupted_code(file: &str, args: &[String]) -> Option<u8> {
    flag(file, args, "interrupted-exit-code").map(|code| {
        code.parse()
            .unwrap_or_else(|e| panic!("deploy/{file}: --interrupted-exit-code {code}: {e}"))
    })
}

/// The exit codes other than the interrupted one: a retry rule must match none.
/// The exit status of a process SIGTERMed before it installed a handler
/// (128 + 15, as Docker, ECS and Kubernetes report it): in its first
/// instants, before `spotbatch::shutdown::listen()`; nothing was done.
const SIGTERM_BEFORE_HANDLER: u8 = 143;

fn other_codes() -> BTreeMap<&'static str, u8> {
    let c = ExitCodes::default();
    BTreeMap::from([
        ("failed", c.failed),
        ("conflict", c.conflict),
        ("bad_checkpoint", c.bad_checkpoint),
        ("bad_config", c.bad_config),
        ("checkpoint_not_saved", c.checkpoint_not_saved),
        ("store_refused", c.store_refused),
    ])
}

fn env_var<'a>(file: &str, env: &'a Value, name: &str) -> &'a str {
    env.as_array()
        .unwrap_or_else(|| panic!("deploy/{file}: environment is not a list"))
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|e| e.get("value").and_then(Value::as_str))
        .unwrap_or_else(|| panic!("deploy/{file}: no {name} in the environment"))
}

fn assert_s3_store(file: &str, url: &str) {
    let rest = url.strip_prefix("s3://").unwrap_or_else(|| {
        panic!("deploy/{file}: SPOTBATCH_STORE {url:?} is not s3://bucket/prefix")
    });
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    assert!(
        !bucket.is_empty() && !prefix.trim_matches('/').is_empty(),
        "deploy/{file}: SPOTBATCH_STORE {url:?} needs a bucket and a prefix (the task role is scoped to the prefix)"
    );
}

// ---------------------------------------------------------------------------
// The kit as a whole
// ---------------------------------------------------------------------------

#[test]
fn every_json_and_yaml_file_parses() {
    let jsons = files(&[".json"]);
    let yamls = files(&[".yaml", ".yml"]);
    for file in &jsons {
        json(file);
    }
    for file in &yamls {
        yaml(file);
    }
    for expected in [
        "ecs/task-definition.json",
        "ecs/run-task.json",
        "batch/job-definition.json",
    ] {
        assert!(
            jsons.iter().any(|f| f == expected),
            "deploy/{expected} is missing"
        );
    }
    assert!(
        yamls.iter().any(|f| f == "kubernetes/job.yaml"),
        "deploy/kubernetes/job.yaml is missing"
    );
}

#[test]
fn the_retry_code_is_the_runners_and_no_other_outcomes() {
    assert_eq!(ExitCodes::RETRY_ME, 75);
    let defaults = ExitCodes::default();
    assert_eq!(
        defaults.interrupted, 0,
        "ECS needs no --interrupted-exit-code only while the default is 0"
    );
    for (name, code) in other_codes() {
        assert_ne!(code, ExitCodes::RETRY_ME, "{name} shares the retry code");
        assert_ne!(code, 0, "{name} looks like success");
    }
}

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

/// The Dockerfile's instructions: (KEYWORD, arguments), continuation lines
/// joined, comments and parser directives dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    assert!(
        current.is_empty(),
        "deploy/Dockerfile ends inside a continued line"
    );
    out
}

#[test]
fn dockerfile_entrypoint_is_exec_form_and_runs_as_non_root() {
    let instructions = dockerfile();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "deploy/Dockerfile: not multi-stage");
    let last_stage = &instructions[*stages.last().unwrap()..];
    let runtime_image = &last_stage[0].1;
    assert!(
        !runtime_image.starts_with("rust:"),
        "deploy/Dockerfile: the runtime image is the build image ({runtime_image})"
    );

    let build = instructions
        .iter()
        .find(|(k, a)| k == "RUN" && a.contains("cargo build"))
        .expect("deploy/Dockerfile: no `cargo build` step");
    for needed in ["--release", "--locked", "--example"] {
        assert!(
            build.1.contains(needed),
            "deploy/Dockerfile: `cargo build` without {needed}"
        );
    }
    // Every file in the kit names an s3:// store, which a build without the
    // `s3` feature refuses (exit 78): the image's default build has it.
    let features = build
        .1
        .split_once("--features")
        .map(|(_, rest)| {
            rest.split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches('"')
        })
        .expect("deploy/Dockerfile: `cargo build` without --features (the kit's stores are s3://)");
    let features = match features
        .strip_prefix("${")
        .and_then(|f| f.strip_suffix('}'))
    {
        Some(arg) => instructions
            .iter()
            .filter(|(k, _)| k == "ARG")
            .find_map(|(_, a)| a.strip_prefix(&format!("{arg}=")))
            .unwrap_or_else(|| panic!("deploy/Dockerfile: no default for ARG {arg}"))
            .trim_matches('"'),
        None => features,
    };
    assert!(
        features.split([',', ' ']).any(|f| f == "s3"),
        "deploy/Dockerfile: builds with features {features:?}, without s3"
    );

    let entrypoints: Vec<&String> = last_stage
        .iter()
        .filter(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, a)| a)
        .collect();
    let entrypoint = entrypoints
        .last()
        .expect("deploy/Dockerfile: no ENTRYPOINT");
    assert!(
        entrypoint.starts_with('['),
        "deploy/Dockerfile: ENTRYPOINT {entrypoint} is shell form: /bin/sh would be PID 1 and swallow SIGTERM"
    );
    let argv: Vec<String> = serde_json::from_str(entrypoint).unwrap_or_else(|e| {
        panic!("deploy/Dockerfile: ENTRYPOINT {entrypoint} is not a JSON array: {e}")
    });
    assert_eq!(argv, ["/app/quickstart"], "deploy/Dockerfile: ENTRYPOINT");
    assert!(
        !["sh", "bash", "/bin/sh", "/bin/bash"].contains(&argv[0].as_str()),
        "deploy/Dockerfile: ENTRYPOINT runs a shell"
    );
    for (k, a) in last_stage {
        if k == "CMD" {
            assert!(
                a.starts_with('['),
                "deploy/Dockerfile: CMD {a} is shell form"
            );
        }
    }
    assert!(
        last_stage
            .iter()
            .any(|(k, a)| k == "COPY" && a.contains("--from=") && a.ends_with("/app/quickstart")),
        "deploy/Dockerfile: the binary is not copied to /app/quickstart"
    );

    let user = last_stage
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, a)| a.as_str())
        .expect("deploy/Dockerfile: no USER in the runtime stage (it would run as root)");
    let uid = user.split(':').next().unwrap_or("");
    assert!(
        !uid.is_empty() && uid != "root" && uid != "0",
        "deploy/Dockerfile: runs as {user}"
    );
}

// ---------------------------------------------------------------------------
// ECS / Fargate Spot
// ---------------------------------------------------------------------------

/// The job's container in the task definition, and its stop timeout.
fn ecs_container() -> (Value, f64) {
    const FILE: &str = "ecs/task-definition.json";
    let td = json(FILE);
    let containers = at(FILE, &td, &["containerDefinitions"])
        .as_array()
        .expect("containerDefinitions is a list");
    assert_eq!(containers.len(), 1, "deploy/{FILE}: one container expected");
    let c = containers[0].clone();
    let stop_timeout = number(FILE, at(FILE, &c, &["stopTimeout"]));
    (c, stop_timeout)
}

#[test]
fn ecs_task_definition_gives_the_job_its_stop_timeout() {
    const FILE: &str = "ecs/task-definition.json";
    let td = json(FILE);
    assert!(
        strings(FILE, at(FILE, &td, &["requiresCompatibilities"])).contains(&"FARGATE".to_owned()),
        "deploy/{FILE}: not a Fargate task definition"
    );
    assert_eq!(
        at(FILE, &td, &["runtimePlatform", "cpuArchitecture"]),
        "X86_64",
        "deploy/{FILE}: Fargate Spot runs X86_64 tasks only"
    );

    let (c, stop_timeout) = ecs_container();
    assert!(
        (2.0..=FARGATE_MAX_STOP_TIMEOUT).contains(&stop_timeout),
        "deploy/{FILE}: stopTimeout {stop_timeout} is outside 2..=120 (the Fargate maximum)"
    );
    assert_eq!(
        at(FILE, &c, &["linuxParameters", "initProcessEnabled"]),
        true,
        "deploy/{FILE}: initProcessEnabled"
    );
    assert!(
        c.get("entryPoint").is_none(),
        "deploy/{FILE}: entryPoint replaces the image's exec-form ENTRYPOINT"
    );
    let args = strings(FILE, at(FILE, &c, &["command"]));
    assert_quickstart_accepts(FILE, &args);
    assert_grace_fits(FILE, &args, stop_timeout, "ECS stopTimeout");
    // ECS starts a new task whatever the exit code: the default 0 is right.
    if let Some(code) = interrupted_code(FILE, &args) {
        assert_eq!(code, ExitCodes::default().interrupted, "deploy/{FILE}");
    }
    assert_s3_store(
        FILE,
        env_var(FILE, at(FILE, &c, &["environment"]), "SPOTBATCH_STORE"),
    );
    assert_eq!(
        at(FILE, &c, &["logConfiguration", "logDriver"]),
        "awslogs",
        "deploy/{FILE}: logDriver"
    );
}

#[test]
fn ecs_run_task_uses_fargate_spot() {
    const FILE: &str = "ecs/run-task.json";
    let run = json(FILE);
    let strategy = at(FILE, &run, &["capacityProviderStrategy"])
        .as_array()
        .expect("capacityProviderStrategy is a list");
    assert!(
        strategy
            .iter()
            .any(|s| s["capacityProvider"] == "FARGATE_SPOT"
                && s["weight"].as_u64().unwrap_or(0) > 0),
        "deploy/{FILE}: no FARGATE_SPOT with a weight in the capacity provider strategy"
    );
    assert!(
        run.get("launchType").is_none(),
        "deploy/{FILE}: launchType and capacityProviderStrategy exclude each other"
    );
    let td = json("ecs/task-definition.json");
    assert_eq!(
        run["taskDefinition"], td["family"],
        "deploy/{FILE}: runs another task family than ecs/task-definition.json"
    );
}

// ---------------------------------------------------------------------------
// Terraform
// ---------------------------------------------------------------------------

/// HCL with comments dropped and runs of whitespace collapsed to one space.
fn hcl(rel: &str) -> String {
    read(rel)
        .lines()
        .map(
            |l| match l.trim_start().starts_with('#') || l.trim_start().starts_with("//") {
                true => "",
                false => l,
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The body of the block that starts with `head` (e.g. `variable "x" {`).
fn hcl_block(file: &str, text: &str, head: &str) -> String {
    let start = text
        .find(head)
        .unwrap_or_else(|| panic!("deploy/{file}: no `{head}`"))
        + head.len();
    let mut depth = 1;
    for (i, ch) in text[start..].char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return text[start..start + i].to_owned();
                }
            }
            _ => {}
        }
    }
    panic!("deploy/{file}: `{head}` is not closed")
}

fn tf_variable(name: &str) -> String {
    const FILE: &str = "terraform/variables.tf";
    hcl_block(FILE, &hcl(FILE), &format!("variable \"{name}\" {{"))
}

fn tf_default(name: &str) -> f64 {
    let body = tf_variable(name);
    let value = body
        .split("default = ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| {
            panic!("deploy/terraform/variables.tf: variable {name:?} has no default")
        });
    value
        .parse()
        .unwrap_or_else(|e| panic!("deploy/terraform/variables.tf: {name} default {value:?}: {e}"))
}

#[test]
fn terraform_agrees_with_the_task_definition() {
    let main = hcl("terraform/main.tf");
    let (c, json_stop_timeout) = ecs_container();

    let stop_timeout = tf_default("stop_timeout");
    assert_eq!(
        stop_timeout, json_stop_timeout,
        "deploy/terraform: stop_timeout default differs from ecs/task-definition.json stopTimeout"
    );
    assert!(
        tf_variable("stop_timeout").contains("var.stop_timeout <= 120"),
        "deploy/terraform/variables.tf: stop_timeout is not validated against the Fargate maximum"
    );
    let margin = tf_default("grace_margin");
    assert!(
        MARGIN.contains(&margin),
        "deploy/terraform: grace_margin {margin}"
    );
    let args = strings("ecs/task-definition.json", at("", &c, &["command"]));
    let json_grace: f64 = flag("ecs/task-definition.json", &args, "grace")
        .expect("--grace")
        .parse()
        .expect("--grace is a number");
    assert_eq!(
        stop_timeout - margin,
        json_grace,
        "deploy/terraform: stop_timeout - grace_margin differs from the task definition's --grace"
    );

    for wiring in [
        // the container's stop timeout and the runner's grace come from the variables
        "stopTimeout = var.stop_timeout",
        "grace = var.stop_timeout - var.grace_margin",
        "command = concat([\"--grace\", tostring(local.grace),",
        "initProcessEnabled = true",
        "cpu_architecture = \"X86_64\"",
        "name = \"SPOTBATCH_STORE\", value = local.store_url",
        "logDriver = \"awslogs\"",
        // started on a schedule, on Fargate Spot
        "capacity_provider = \"FARGATE_SPOT\"",
        "resource \"aws_scheduler_schedule\"",
        "capacity_provider = local.capacity_provider",
        // the checkpoint bucket: versioned, private, encrypted
        "resource \"aws_s3_bucket_versioning\" \"checkpoints\" { bucket = aws_s3_bucket.checkpoints.id versioning_configuration { status = \"Enabled\" } }",
        "block_public_acls = true block_public_policy = true ignore_public_acls = true restrict_public_buckets = true",
        "resource \"aws_s3_bucket_server_side_encryption_configuration\" \"checkpoints\"",
    ] {
        assert!(
            main.contains(wiring),
            "deploy/terraform/main.tf: `{wiring}` not found"
        );
    }
    assert!(
        !main.contains("entryPoint"),
        "deploy/terraform/main.tf: entryPoint replaces the image's exec-form ENTRYPOINT"
    );

    // The task role: objects under the checkpoint prefix, listing only that
    // prefix, and nothing broader.
    let task = hcl_block(
        "terraform/main.tf",
        &main,
        "data \"aws_iam_policy_document\" \"task\" {",
    );
    for grant in [
        "actions = [\"s3:GetObject\", \"s3:PutObject\", \"s3:DeleteObject\"] resources = [\"${aws_s3_bucket.checkpoints.arn}/${var.checkpoint_prefix}/*\"]",
        "actions = [\"s3:ListBucket\"] resources = [aws_s3_bucket.checkpoints.arn] condition { test = \"StringLike\" variable = \"s3:prefix\" values = [\"${var.checkpoint_prefix}/*\"] }",
    ] {
        assert!(
            task.contains(grant),
            "deploy/terraform/main.tf: the task role lacks `{grant}`"
        );
    }
    for broad in ["s3:*", "\"*\"", "arn}/*\"", "effect = \"Deny\""] {
        assert!(
            !task.contains(broad),
            "deploy/terraform/main.tf: the task role has `{broad}`"
        );
    }
}

// ---------------------------------------------------------------------------
// AWS Batch
// ---------------------------------------------------------------------------

/// AWS Batch's `onExitCode` glob: digits, optionally ending in `*`.
fn batch_glob_matches(pattern: &str, code: u8) -> bool {
    let code = code.to_string();
    match pattern.strip_suffix('*') {
        Some(prefix) => code.starts_with(prefix),
        None => code == pattern,
    }
}

#[test]
fn batch_retries_exactly_the_interrupted_exit_code() {
    const FILE: &str = "batch/job-definition.json";
    let jd = json(FILE);
    let retry = at(FILE, &jd, &["retryStrategy"]);
    let attempts = number(FILE, at(FILE, retry, &["attempts"]));
    assert!(
        (2.0..=10.0).contains(&attempts),
        "deploy/{FILE}: attempts {attempts} (Batch allows 1 to 10; 1 never retries)"
    );
    let rules = at(FILE, retry, &["evaluateOnExit"])
        .as_array()
        .expect("evaluateOnExit is a list");
    assert!(
        (1..=5).contains(&rules.len()),
        "deploy/{FILE}: Batch allows at most 5 evaluateOnExit rules"
    );
    let text = |rule: &Value, key: &str| rule.get(key).and_then(Value::as_str).map(str::to_owned);
    let action = |rule: &Value| {
        text(rule, "action")
            .unwrap_or_else(|| panic!("deploy/{FILE}: rule {rule} has no action"))
            .to_ascii_uppercase()
    };

    // The first rule that can match a run exiting 75 retries it, whatever the
    // reason (rules are evaluated in order; a rule matches when all its
    // conditions do).
    let first = rules
        .iter()
        .find(|r| text(r, "onExitCode").is_none_or(|p| batch_glob_matches(&p, ExitCodes::RETRY_ME)))
        .unwrap_or_else(|| panic!("deploy/{FILE}: no rule for exit code 75"));
    assert_eq!(
        action(first),
        "RETRY",
        "deploy/{FILE}: exit 75 meets {first} first"
    );
    assert_eq!(
        text(first, "onExitCode").as_deref(),
        Some("75"),
        "deploy/{FILE}: the retry rule should name the interrupted code exactly"
    );
    assert!(
        first.get("onReason").is_none() && first.get("onStatusReason").is_none(),
        "deploy/{FILE}: the exit-75 rule has reason conditions: some interrupted runs would not match"
    );
    assert_eq!(ExitCodes::RETRY_ME, 75);

    // A SIGTERM before the handlers: nothing was done, retry it.
    let early = rules
        .iter()
        .find(|r| {
            text(r, "onExitCode").is_none_or(|p| batch_glob_matches(&p, SIGTERM_BEFORE_HANDLER))
        })
        .unwrap_or_else(|| panic!("deploy/{FILE}: no rule for exit code 143"));
    assert_eq!(
        (action(early), text(early, "onExitCode").as_deref()),
        ("RETRY".to_owned(), Some("143")),
        "deploy/{FILE}: exit 143 (SIGTERM before the job's handlers) meets {early} first"
    );

    // No other outcome of the runner is retried by exit code.
    for rule in rules.iter().filter(|r| action(r) == "RETRY") {
        if let Some(pattern) = text(rule, "onExitCode") {
            for (name, code) in other_codes() {
                assert!(
                    !batch_glob_matches(&pattern, code),
                    "deploy/{FILE}: {rule} retries exit {code} ({name})"
                );
            }
        }
    }

    // Everything else exits: the last rule is a catch-all EXIT.
    let last = rules.last().unwrap();
    assert_eq!(
        action(last),
        "EXIT",
        "deploy/{FILE}: the last rule is not EXIT"
    );
    // AWS's documented catch-all ("Automated job retries", AWS Batch User
    // Guide): `onReason: "*"`, which also matches a failure with no exit code.
    // docs/shutdown.md shows the same form.
    let conditions: Vec<&str> = ["onExitCode", "onReason", "onStatusReason"]
        .into_iter()
        .filter(|k| last.get(*k).is_some())
        .collect();
    assert!(
        conditions == ["onReason"] && text(last, "onReason").as_deref() == Some("*"),
        "deploy/{FILE}: the last rule {last} is not the catch-all {{\"onReason\": \"*\", \"action\": \"EXIT\"}} \
         (without one, unmatched failures are retried)"
    );

    let c = at(FILE, &jd, &["containerProperties"]);
    assert!(
        c.get("stopTimeout").is_none(),
        "deploy/{FILE}: containerProperties has no stopTimeout in Batch"
    );
    let args = strings(FILE, at(FILE, c, &["command"]));
    assert_quickstart_accepts(FILE, &args);
    assert_eq!(
        interrupted_code(FILE, &args),
        Some(ExitCodes::RETRY_ME),
        "deploy/{FILE}: the container must exit 75 when interrupted (the default 0 is SUCCEEDED to Batch)"
    );
    assert_grace_fits(
        FILE,
        &args,
        BATCH_STOP_TIMEOUT,
        "AWS Batch's SIGTERM-to-SIGKILL",
    );
    assert_s3_store(
        FILE,
        env_var(FILE, at(FILE, c, &["environment"]), "SPOTBATCH_STORE"),
    );
    assert_eq!(
        at(FILE, c, &["linuxParameters", "initProcessEnabled"]),
        true,
        "deploy/{FILE}: initProcessEnabled"
    );
}

// ---------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------

#[test]
fn kubernetes_job_ignores_the_interrupted_exit_code_and_gives_the_grace() {
    const FILE: &str = "kubernetes/job.yaml";
    let job = yaml(FILE);
    assert_eq!(job["apiVersion"], "batch/v1", "deploy/{FILE}");
    assert_eq!(job["kind"], "Job", "deploy/{FILE}");
    let spec = at(FILE, &job, &["spec"]);
    let backoff = number(FILE, at(FILE, spec, &["backoffLimit"]));
    assert!(backoff >= 1.0, "deploy/{FILE}: backoffLimit {backoff}");

    let pod = at(FILE, spec, &["template", "spec"]);
    assert_eq!(
        at(FILE, pod, &["restartPolicy"]),
        "Never",
        "deploy/{FILE}: podFailurePolicy needs restartPolicy: Never"
    );
    assert_ne!(
        pod.get("shareProcessNamespace"),
        Some(&Value::Bool(true)),
        "deploy/{FILE}: with a shared PID namespace the job is not PID 1"
    );
    let grace_period = number(FILE, at(FILE, pod, &["terminationGracePeriodSeconds"]));
    let containers = at(FILE, pod, &["containers"])
        .as_array()
        .expect("containers is a list");
    assert_eq!(containers.len(), 1, "deploy/{FILE}: one container expected");
    let c = &containers[0];
    let name = at(FILE, c, &["name"]).as_str().expect("container name");
    assert!(
        c.get("command").is_none(),
        "deploy/{FILE}: `command` replaces the image's exec-form ENTRYPOINT; pass flags with `args`"
    );
    let args = strings(FILE, at(FILE, c, &["args"]));
    assert_quickstart_accepts(FILE, &args);
    assert_eq!(
        interrupted_code(FILE, &args),
        Some(ExitCodes::RETRY_ME),
        "deploy/{FILE}: the container must exit 75 when interrupted (0 would complete the Job)"
    );
    assert_grace_fits(FILE, &args, grace_period, "terminationGracePeriodSeconds");
    assert_s3_store(
        FILE,
        env_var(FILE, at(FILE, c, &["env"]), "SPOTBATCH_STORE"),
    );

    // The first exit-code rule that matches 75 for this container ignores it.
    let rules = at(FILE, spec, &["podFailurePolicy", "rules"])
        .as_array()
        .expect("podFailurePolicy.rules is a list");
    let matches = |rule: &Value, code: u8| -> bool {
        let Some(on) = rule.get("onExitCodes") else {
            return false;
        };
        if on
            .get("containerName")
            .is_some_and(|n| n.as_str() != Some(name))
        {
            return false;
        }
        let values: Vec<u64> = at(FILE, on, &["values"])
            .as_array()
            .expect("onExitCodes.values is a list")
            .iter()
            .map(|v| v.as_u64().expect("exit codes are numbers"))
            .collect();
        let listed = values.contains(&u64::from(code));
        match at(FILE, on, &["operator"]).as_str() {
            Some("In") => listed,
            Some("NotIn") => !listed,
            other => panic!("deploy/{FILE}: onExitCodes.operator {other:?}"),
        }
    };
    let first = rules
        .iter()
        .find(|r| matches(r, ExitCodes::RETRY_ME))
        .unwrap_or_else(|| panic!("deploy/{FILE}: no podFailurePolicy rule for exit code 75"));
    assert_eq!(
        first["action"], "Ignore",
        "deploy/{FILE}: exit 75 meets {first} first"
    );
    let on = &first["onExitCodes"];
    assert_eq!(
        on["containerName"].as_str(),
        Some(name),
        "deploy/{FILE}: the rule should name the job's container"
    );
    assert_eq!(on["operator"], "In", "deploy/{FILE}");
    assert_eq!(
        on["values"],
        serde_json::json!([ExitCodes::RETRY_ME, SIGTERM_BEFORE_HANDLER]),
        "deploy/{FILE}: the rule should ignore exactly the interrupted code and 143 \
         (a SIGTERM before the job's handlers)"
    );
    // Ignoring a real failure would retry it forever, uncounted.
    for rule in rules.iter().filter(|r| r["action"] == "Ignore") {
        for (what, code) in other_codes() {
            assert!(
                !matches(rule, code),
                "deploy/{FILE}: {rule} ignores exit {code} ({what})"
            );
        }
    }
}

#[test]
fn every_grace_in_the_kit_is_under_its_platforms_stop_timeout() {
    // Gathered in one place so a change to one file shows next to the others.
    let (ecs, ecs_stop) = ecs_container();
    let ecs_args = strings("ecs/task-definition.json", &ecs["command"]);
    let batch_args = strings(
        "batch/job-definition.json",
        &json("batch/job-definition.json")["containerProperties"]["command"],
    );
    let job = yaml("kubernetes/job.yaml");
    let pod = &job["spec"]["template"]["spec"];
    let k8s_args = strings("kubernetes/job.yaml", &pod["containers"][0]["args"]);
    let k8s_stop = number("kubernetes/job.yaml", &pod["terminationGracePeriodSeconds"]);
    for (file, args, stop, platform) in [
        (
            "ecs/task-definition.json",
            &ecs_args,
            ecs_stop,
            "ECS stopTimeout",
        ),
        (
            "batch/job-definition.json",
            &batch_args,
            BATCH_STOP_TIMEOUT,
            "Batch",
        ),
        (
            "kubernetes/job.yaml",
            &k8s_args,
            k8s_stop,
            "terminationGracePeriodSeconds",
        ),
    ] {
        assert_grace_fits(file, args, stop, platform);
    }
    assert!(ecs_stop <= FARGATE_MAX_STOP_TIMEOUT);
}

// ---------------------------------------------------------------------------
// Partitioned jobs (docs/scaling-out.md)
// ---------------------------------------------------------------------------

/// The command line must be one the partitioned example accepts; returns
/// its `--partitions` and `--assign`.
fn assert_partitioned_accepts(file: &str, args: &[String]) -> (u32, String) {
    let argv = std::iter::once("partitioned").chain(args.iter().map(String::as_str));
    if let Err(e) = partitioned::Args::try_parse_from(argv) {
        panic!("deploy/{file}: the partitioned example refuses {args:?}:\n{e}");
    }
    let partitions = flag(file, args, "partitions")
        .unwrap_or_else(|| panic!("deploy/{file}: no --partitions (every task must say the same)"))
        .parse()
        .unwrap_or_else(|e| panic!("deploy/{file}: --partitions: {e}"));
    let assign = flag(file, args, "assign")
        .unwrap_or_else(|| panic!("deploy/{file}: no --assign"))
        .to_owned();
    (partitions, assign)
}

#[test]
fn batch_array_job_runs_static_tasks_and_retries_the_interrupted_code() {
    const FILE: &str = "batch/partitioned-job-definition.json";
    let jd = json(FILE);
    let args = strings(FILE, at(FILE, &jd, &["containerProperties", "command"]));
    let (partitions, assign) = assert_partitioned_accepts(FILE, &args);
    assert_eq!(
        assign, "static",
        "deploy/{FILE}: AWS Batch array children are static tasks"
    );
    assert_eq!(
        interrupted_code(FILE, &args),
        Some(ExitCodes::RETRY_ME),
        "deploy/{FILE}"
    );
    assert_grace_fits(FILE, &args, BATCH_STOP_TIMEOUT, "Batch");
    let rules = at(FILE, &jd, &["retryStrategy", "evaluateOnExit"])
        .as_array()
        .expect("evaluateOnExit is a list");
    assert_eq!(
        rules[0]["onExitCode"], "75",
        "deploy/{FILE}: the first rule retries 75"
    );
    assert_eq!(rules[0]["action"], "RETRY", "deploy/{FILE}");
    let last = rules.last().expect("a catch-all rule");
    assert_eq!(
        (&last["onReason"], &last["action"]),
        (&Value::from("*"), &Value::from("EXIT"))
    );

    const SUBMIT: &str = "batch/submit-partitioned-job.json";
    let submit = json(SUBMIT);
    assert_eq!(
        submit["jobDefinition"], jd["jobDefinitionName"],
        "deploy/{SUBMIT}"
    );
    let size = number(SUBMIT, at(SUBMIT, &submit, &["arrayProperties", "size"]));
    assert!(
        (2.0..=10_000.0).contains(&size),
        "deploy/{SUBMIT}: array size {size} (2 to 10,000)"
    );
    assert!(
        size <= f64::from(partitions),
        "deploy/{SUBMIT}: {size} children for {partitions} partitions leaves some with nothing"
    );
}

#[test]
fn kubernetes_indexed_job_gives_each_pod_its_index_and_the_count() {
    const FILE: &str = "kubernetes/partitioned-job.yaml";
    let job = yaml(FILE);
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed", "deploy/{FILE}");
    let completions = number(FILE, &spec["completions"]);
    assert!(
        number(FILE, &spec["parallelism"]) <= completions,
        "deploy/{FILE}: parallelism"
    );
    assert!(
        number(FILE, &spec["backoffLimitPerIndex"]) >= 1.0,
        "deploy/{FILE}: backoffLimitPerIndex"
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(
        pod["restartPolicy"], "Never",
        "deploy/{FILE}: required by podFailurePolicy"
    );
    let container = &pod["containers"][0];
    assert!(
        container.get("command").is_none(),
        "deploy/{FILE}: `command` replaces the ENTRYPOINT"
    );
    let ignores_75 = spec["podFailurePolicy"]["rules"]
        .as_array()
        .expect("podFailurePolicy rules")
        .iter()
        .any(|r| {
            r["action"] == "Ignore"
                && r["onExitCodes"]["operator"] == "In"
                && r["onExitCodes"]["containerName"] == container["name"]
                && r["onExitCodes"]["values"].as_array().is_some_and(|v| {
                    v.iter()
                        .any(|c| c.as_u64() == Some(u64::from(ExitCodes::RETRY_ME)))
                })
        });
    assert!(
        ignores_75,
        "deploy/{FILE}: no Ignore rule for exit 75 on the job's container"
    );
    let args = strings(FILE, &container["args"]);
    let (partitions, assign) = assert_partitioned_accepts(FILE, &args);
    assert_eq!(
        assign, "static",
        "deploy/{FILE}: Indexed Job pods are static tasks"
    );
    assert_eq!(
        interrupted_code(FILE, &args),
        Some(ExitCodes::RETRY_ME),
        "deploy/{FILE}"
    );
    let grace_period = number(FILE, &pod["terminationGracePeriodSeconds"]);
    assert_grace_fits(FILE, &args, grace_period, "terminationGracePeriodSeconds");
    let count: f64 = env_var(FILE, &container["env"], "SPOTBATCH_TASK_COUNT")
        .parse()
        .expect("SPOTBATCH_TASK_COUNT is a number");
    assert_eq!(
        count, completions,
        "deploy/{FILE}: SPOTBATCH_TASK_COUNT is not spec.completions"
    );
    assert!(
        completions <= f64::from(partitions),
        "deploy/{FILE}: more pods than partitions"
    );
    let claim = &pod["volumes"][0]["persistentVolumeClaim"]["claimName"];
    let pvc = yaml("kubernetes/partitioned-pvc.yaml");
    assert_eq!(
        pvc["metadata"]["name"], *claim,
        "deploy/{FILE}: the volume's claim"
    );
    assert!(
        strings(
            "kubernetes/partitioned-pvc.yaml",
            &pvc["spec"]["accessModes"]
        )
        .contains(&"ReadWriteMany".to_owned()),
        "deploy/kubernetes/partitioned-pvc.yaml: pods on many nodes write at once: ReadWriteMany"
    );
}

#[test]
fn ecs_fleet_runs_dynamic_tasks_on_fargate_spot() {
    const FILE: &str = "ecs/partitioned-task-definition.json";
    let td = json(FILE);
    let c = &td["containerDefinitions"][0];
    let stop_timeout = number(FILE, at(FILE, c, &["stopTimeout"]));
    assert!(
        stop_timeout <= FARGATE_MAX_STOP_TIMEOUT,
        "deploy/{FILE}: stopTimeout"
    );
    assert!(
        c.get("entryPoint").is_none(),
        "deploy/{FILE}: entryPoint replaces the ENTRYPOINT"
    );
    let args = strings(FILE, at(FILE, c, &["command"]));
    let (_, assign) = assert_partitioned_accepts(FILE, &args);
    assert_eq!(
        assign, "dynamic",
        "deploy/{FILE}: an ECS fleet shares the partitions dynamically"
    );
    assert_grace_fits(FILE, &args, stop_timeout, "ECS stopTimeout");
    if let Some(code) = interrupted_code(FILE, &args) {
        assert_eq!(
            code,
            ExitCodes::default().interrupted,
            "deploy/{FILE}: ECS retries nothing"
        );
    }
    const RUN: &str = "ecs/run-partitioned-tasks.json";
    let run = json(RUN);
    assert_eq!(run["taskDefinition"], td["family"], "deploy/{RUN}");
    let count = number(RUN, &run["count"]);
    assert!(
        (1.0..=10.0).contains(&count),
        "deploy/{RUN}: RunTask starts 1 to 10 tasks"
    );
    assert!(
        run["capacityProviderStrategy"]
            .as_array()
            .is_some_and(|s| s.iter().any(|p| p["capacityProvider"] == "FARGATE_SPOT")),
        "deploy/{RUN}: not on Fargate Spot"
    );
}

#[test]
fn dockerfile_has_a_partitioned_target_in_exec_form() {
    let instructions = dockerfile();
    let start = instructions
        .iter()
        .position(|(k, a)| k == "FROM" && a.ends_with(" AS partitioned"))
        .expect("deploy/Dockerfile: no `partitioned` stage");
    let stage: Vec<&(String, String)> = instructions[start + 1..]
        .iter()
        .take_while(|(k, _)| k != "FROM")
        .collect();
    let entrypoint = stage
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, a)| a.as_str())
        .expect("deploy/Dockerfile: the partitioned stage has no ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(entrypoint).unwrap_or_else(|e| {
        panic!("deploy/Dockerfile: partitioned ENTRYPOINT {entrypoint} is not exec form: {e}")
    });
    assert_eq!(argv, ["/app/partitioned"]);
    assert!(
        stage
            .iter()
            .any(|(k, a)| k == "USER" && a.starts_with("65532")),
        "deploy/Dockerfile: the partitioned stage runs as root"
    );
}

// ---------------------------------------------------------------------------
// The guide
// ---------------------------------------------------------------------------

/// The body of the first fenced block of `info` in `docs/shutdown.md`.
fn guide_block(info: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/shutdown.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fence = format!("```{info}\n");
    let start = text
        .find(&fence)
        .unwrap_or_else(|| panic!("docs/shutdown.md: no ```{info} block"))
        + fence.len();
    let len = text[start..].find("```").expect("an unclosed block");
    text[start..start + len].to_owned()
}

/// The retry rules the guide shows are the ones the kit uses, so that there
/// is one form of each.
#[test]
fn the_guide_shows_the_kits_retry_rules() {
    let batch: Value = serde_json::from_str(&format!("{{{}}}", guide_block("json")))
        .unwrap_or_else(|e| panic!("docs/shutdown.md: the json block: {e}"));
    assert_eq!(
        batch["retryStrategy"],
        json("batch/job-definition.json")["retryStrategy"],
        "docs/shutdown.md and deploy/batch/job-definition.json show different retry strategies"
    );

    let kubernetes = parse_yaml(&guide_block("yaml"))
        .unwrap_or_else(|e| panic!("docs/shutdown.md: the yaml block: {e}"));
    assert_eq!(
        kubernetes["podFailurePolicy"],
        yaml("kubernetes/job.yaml")["spec"]["podFailurePolicy"],
        "docs/shutdown.md and deploy/kubernetes/job.yaml show different pod failure policies"
    );
}
