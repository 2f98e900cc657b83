//! Commands that change a checkpoint: `reset`, `mark`, `set-cursor`, `import`.
//!
//! Every change is a compare-and-swap like the runner's own saves: the
//! checkpoint is loaded, changed, and saved with `expected` = the version
//! loaded, as version + 1, written by this process (task `spotbatch <command>
//! (CLI)`), with the lease released. A runner that saved in between makes the
//! save fail with nothing written (exit 73). A job whose checkpoint holds a
//! live lease is refused, naming the holder, unless `--force`; a forced
//! change fences the holder off at its next save (it exits 73).

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;

use serde_json::Value;
use spotbatch::{Checkpoint, Codec, Status, StoreError, Writer};

use crate::error::CliError;
use crate::stores::Open;
use crate::target::{check_not_held, holder, live_lease, Target};
use crate::{fmt, stores};

/// The statuses `mark` can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum MarkStatus {
    /// Resumable; as if a run had been killed after its last checkpoint.
    Running,
    /// Resumable; as if a run had stopped on request.
    Interrupted,
    /// Done: the next run exits 0 at once.
    Completed,
    /// Resumable; the failure message is kept for people to read.
    Failed,
}

/// Marks `c` as the next version, written by this CLI, lease released.
pub(crate) fn stamp(c: &mut Checkpoint, version: u64, command: &str) {
    let mut writer = Writer::this_process();
    writer.task = format!("spotbatch {command} (CLI)");
    c.version = version;
    c.writer = writer;
    c.lease = None;
    c.updated_ms = fmt::now_ms();
}

/// Saves by compare-and-swap, explaining a lost race.
pub(crate) async fn save(
    target: &Target,
    c: &Checkpoint,
    expected: Option<u64>,
    what: &str,
) -> Result<(), CliError> {
    target.store.save(c, expected).await.map_err(|e| match e {
        StoreError::Conflict { .. } => CliError::Held(format!(
            "{e}. The job changed while this command ran (a runner saved in between?): \
             nothing was written; look at it again (spotbatch show) and retry {what}"
        )),
        other => other.into(),
    })
}

/// A corrupt checkpoint cannot be compared, so it cannot be replaced or removed by CAS.
pub(crate) fn corrupt_hint(e: CliError) -> CliError {
    if let CliError::Store(StoreError::Corrupt { path, reason, .. }) = &e {
        // A damaged one's message says what to do already.
        let what_to_do = if reason.is_damaged() {
            String::new()
        } else {
            format!(
                ": stop the job, keep a copy of {path} to investigate, and remove it by hand \
                 (the next run then starts from the beginning)"
            )
        };
        return CliError::BadCheckpoint(format!(
            "{e}. An unreadable checkpoint cannot be changed by compare-and-swap \
             (its version cannot be read){what_to_do}"
        ));
    }
    e
}

/// `spotbatch reset URL JOB`: deletes the checkpoint (CAS on its version).
pub(crate) async fn reset(url: &str, job: &str, yes: bool, force: bool) -> Result<(), CliError> {
    let target = Target::open(url, job, Open::Existing).await?;
    let c = target.load_existing().await.map_err(corrupt_hint)?;
    check_not_held(&target, &c, force, "reset it")?;
    let what = format!(
        "job {:?} in {} (version {}, {}, {} chunks done)",
        c.job.as_str(),
        target.location(),
        c.version,
        c.status,
        c.counters.chunks
    );
    if !yes {
        confirm(&format!(
            "Reset {what}? Its checkpoint is deleted and the next run starts from the beginning."
        ))?;
    }
    match target.store.delete(&target.key, c.version).await {
        Ok(()) => {}
        Err(e @ StoreError::Conflict { .. }) => {
            return Err(CliError::Held(format!(
                "{e}. The job changed while this command ran: nothing was deleted; look again and retry"
            )))
        }
        Err(e) => return Err(e.into()),
    }
    println!("reset {what}: checkpoint deleted; the next run starts from the beginning");
    Ok(())
}

fn confirm(question: &str) -> Result<(), CliError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::Failed(format!(
            "{question}\nrefusing without confirmation: stdin is not a terminal; pass --yes"
        )));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(CliError::Failed("cancelled: nothing was changed".into()))
    }
}

/// `spotbatch mark URL JOB --status S [--message M]`.
pub(crate) async fn mark(
    url: &str,
    job: &str,
    status: MarkStatus,
    message: Option<String>,
    force: bool,
) -> Result<(), CliError> {
    let status = match (status, message) {
        (MarkStatus::Running, None) => Status::Running,
        (MarkStatus::Completed, None) => Status::Completed,
        (MarkStatus::Interrupted, m) => Status::Interrupted {
            source: m.unwrap_or_else(|| "spotbatch mark".into()),
        },
        (MarkStatus::Failed, m) => Status::Failed {
            message: m.unwrap_or_else(|| "marked failed with spotbatch mark".into()),
        },
        (s @ (MarkStatus::Running | MarkStatus::Completed), Some(_)) => {
            return Err(CliError::Usage(format!(
                "--message goes with --status interrupted (the source) or failed (the error), not {s:?}"
            )
            .to_lowercase()))
        }
    };
    let target = Target::open(url, job, Open::Existing).await?;
    let mut c = target.load_existing().await.map_err(corrupt_hint)?;
    check_not_held(&target, &c, force, "mark it")?;
    let (old_version, old_status) = (c.version, c.status.clone());
    c.status = status;
    stamp(&mut c, old_version + 1, "mark");
    save(&target, &c, Some(old_version), "the mark").await?;
    println!(
        "job {:?} in {}: status {old_status} → {} (version {old_version} → {})",
        c.job.as_str(),
        target.location(),
        c.status,
        c.version
    );
    Ok(())
}

/// `spotbatch set-cursor URL JOB JSON [--state JSON]`.
pub(crate) async fn set_cursor(
    url: &str,
    job: &str,
    cursor: &str,
    state: Option<&str>,
    allow_shape_change: bool,
    force: bool,
) -> Result<(), CliError> {
    let parse = |what: &str, text: &str| {
        serde_json::from_str::<Value>(text)
            .map_err(|e| CliError::Usage(format!("the new {what} is not JSON ({e}): {text}")))
    };
    let new_cursor = parse("cursor", cursor)?;
    let new_state = state.map(|s| parse("state", s)).transpose()?;

    let target = Target::open(url, job, Open::Existing).await?;
    let mut c = target.load_existing().await.map_err(corrupt_hint)?;
    if c.codec != Codec::Json {
        return Err(CliError::Failed(format!(
            "{}: job {:?} stores its cursor with {}, which is not self-describing: set-cursor edits \
             only JSON cursors (Runner::codec(Codec::Json); the next checkpoint after that switch is JSON)",
            target.location(),
            c.job.as_str(),
            c.codec.name()
        )));
    }
    check_not_held(&target, &c, force, "change its cursor")?;

    let old_cursor = replace_json(
        &target,
        &mut c.cursor,
        &new_cursor,
        "cursor",
        allow_shape_change,
    )?;
    let old_state = match &new_state {
        Some(v) => Some(replace_json(
            &target,
            &mut c.state,
            v,
            "state",
            allow_shape_change,
        )?),
        None => None,
    };
    if let Some(step) = step_of(&new_cursor).filter(|s| (*s as usize) < c.steps.len()) {
        // A job of steps' cursor names its step: `{"step1": …}`.
        c.step = step;
    }
    let old_version = c.version;
    stamp(&mut c, old_version + 1, "set-cursor");
    save(&target, &c, Some(old_version), "set-cursor").await?;
    println!(
        "job {:?} in {}: cursor {old_cursor} → {new_cursor} (version {old_version} → {})",
        c.job.as_str(),
        target.location(),
        c.version
    );
    if let (Some(old), Some(new)) = (old_state, new_state) {
        println!("state {old} → {new}");
    }
    if c.status == Status::Completed {
        eprintln!(
            "spotbatch: note: the job is marked completed, so its next run does nothing; \
             `spotbatch mark {} {job} --status interrupted` makes it resume from the new cursor",
            stores::redacted(url)
        );
    }
    Ok(())
}

/// The step a job of steps' JSON cursor is in: `1` for `{"step1": …}`.
fn step_of(cursor: &Value) -> Option<u32> {
    let object = cursor.as_object().filter(|o| o.len() == 1)?;
    let (key, _) = object.iter().next()?;
    let index = key.strip_prefix("step")?;
    if index.len() > 1 && index.starts_with('0') {
        return None;
    }
    index.parse().ok()
}

/// Replaces JSON bytes with `new`, refusing a change of shape unless allowed;
/// returns the old value as text.
fn replace_json(
    target: &Target,
    bytes: &mut Vec<u8>,
    new: &Value,
    what: &str,
    allow_shape_change: bool,
) -> Result<String, CliError> {
    let old: Option<Value> = serde_json::from_slice(bytes).ok();
    if let Some(old) = &old {
        if !allow_shape_change {
            if let Some(why) = shape_change(old, new) {
                return Err(CliError::Usage(format!(
                    "{}: job {:?}: the new {what} {new} does not have the shape of the stored one {old} ({why}); \
                     the job would fail to decode it (exit 65). Pass --allow-shape-change if the job's type accepts it",
                    target.location(),
                    target.key.as_str()
                )));
            }
        }
    }
    *bytes = serde_json::to_vec(new).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(old.map_or_else(
        || String::from_utf8_lossy(bytes).into_owned(),
        |v| v.to_string(),
    ))
}

/// Why `new` is not the same kind of JSON value as `old` (objects: same keys).
fn shape_change(old: &Value, new: &Value) -> Option<String> {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut old_keys: Vec<&String> = a.keys().collect();
            let mut new_keys: Vec<&String> = b.keys().collect();
            old_keys.sort();
            new_keys.sort();
            (old_keys != new_keys).then(|| format!("keys {old_keys:?} became {new_keys:?}"))
        }
        _ if kind(old) != kind(new) => Some(format!("{} became {}", kind(old), kind(new))),
        _ => None,
    }
}

/// `spotbatch import URL JOB < file`.
///
/// The file must verify (magic, format, CRC) and hold `JOB`. Absent in the
/// store: it is created as it is, version included. Present: it replaces the
/// stored checkpoint by compare-and-swap as version = stored + 1, so versions
/// only ever grow and a runner that held the old version is fenced off.
/// Either way the writer becomes this process and the lease is released.
pub(crate) async fn import(
    url: &str,
    job: &str,
    input: Option<&Path>,
    force: bool,
) -> Result<(), CliError> {
    let target = Target::open(url, job, Open::OrCreate).await?;
    let (source, bytes) = match input {
        Some(path) => (
            path.display().to_string(),
            std::fs::read(path)
                .map_err(|e| CliError::Failed(format!("could not read {}: {e}", path.display())))?,
        ),
        None => {
            let mut stdin = std::io::stdin().lock();
            if stdin.is_terminal() {
                return Err(CliError::Usage(
                    "import reads the checkpoint from stdin: spotbatch import URL JOB < file (or --input FILE)"
                        .into(),
                ));
            }
            let mut bytes = Vec::new();
            stdin
                .read_to_end(&mut bytes)
                .map_err(|e| CliError::Failed(format!("could not read stdin: {e}")))?;
            ("stdin".to_owned(), bytes)
        }
    };
    let mut c = Checkpoint::decode(&bytes).map_err(|e| {
        CliError::BadCheckpoint(format!(
            "{source}: not a usable checkpoint: {e}; nothing was imported into {}",
            target.location()
        ))
    })?;
    if c.job != target.key {
        return Err(CliError::BadCheckpoint(format!(
            "{source} holds the checkpoint of job {:?}, not {:?}; nothing was imported into {}",
            c.job.as_str(),
            target.key.as_str(),
            target.location()
        )));
    }
    let now = fmt::now_ms();
    if let Some(lease) = live_lease(&c, now) {
        let message = format!(
            "the checkpoint in {source} holds a live lease ({}, expires {}): its runner may still be running",
            holder(&c, &lease),
            fmt::relative(lease.expires_ms, now)
        );
        if !force {
            return Err(CliError::Held(format!(
                "{message}; stop it (or wait for the lease to expire) before importing into {}, or pass --force",
                target.location()
            )));
        }
        eprintln!("spotbatch: warning: {message}; importing anyway (--force)");
    }

    let current = target.load().await.map_err(corrupt_hint)?;
    let (expected, version, replaced) = match &current {
        None => (None, c.version, String::from("created")),
        Some(current) => {
            check_not_held(&target, current, force, "replace it")?;
            (
                Some(current.version),
                current.version + 1,
                format!("replaced version {}", current.version),
            )
        }
    };
    let imported_version = c.version;
    stamp(&mut c, version, "import");
    save(&target, &c, expected, "the import").await?;
    println!(
        "imported job {:?} into {} as version {version} ({replaced}; the file held version {imported_version}, {}, {} chunks done)",
        c.job.as_str(),
        target.location(),
        c.status,
        c.counters.chunks
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shape_changes() {
        assert_eq!(shape_change(&json!(1), &json!(2)), None);
        assert_eq!(
            shape_change(&json!({"a": 1, "b": [1]}), &json!({"b": [], "a": 9})),
            None
        );
        assert!(shape_change(&json!(1), &json!("1")).is_some());
        assert!(shape_change(&json!({"a": 1}), &json!({"a": 1, "c": 2}))
            .is_some_and(|w| w.contains("keys")));
        assert!(shape_change(&json!(null), &json!(3)).is_some());
    }

    #[test]
    fn the_step_of_a_cursor_of_steps() {
        assert_eq!(step_of(&json!({"step2": {"offset": 7}})), Some(2));
        assert_eq!(step_of(&json!({"step0": 0})), Some(0));
        assert_eq!(step_of(&json!({"step01": 0})), None);
        assert_eq!(step_of(&json!({"step1": 0, "other": 1})), None);
        assert_eq!(step_of(&json!({"next": 5})), None);
        assert_eq!(step_of(&json!(5)), None);
    }
}
