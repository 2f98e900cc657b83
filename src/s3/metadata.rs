//! The user metadata stored with each checkpoint object, so `list` can tell
//! a job's version and status from a HeadObject.
//!
//! | header (`x-amz-meta-…`) | value |
//! |---|---|
//! | `spotbatch-format` | `1` |
//! | `spotbatch-job` | the job key, percent-encoded (left out when over 1024 bytes) |
//! | `spotbatch-version` | the checkpoint's version |
//! | `spotbatch-status` | `running`, `interrupted`, `completed` or `failed` |
//! | `spotbatch-detail` | the interruption source or failure message, percent-encoded (left out when over 256 bytes, and then `spotbatch-detail-omitted: true`) |
//! | `spotbatch-updated-ms` | when it was written, ms since the Unix epoch |
//! | `spotbatch-chunks` | chunks done |
//!
//! Everything fits AWS's 2 KB limit on user metadata. An object whose
//! metadata is missing or incomplete is listed from its body instead.

use std::collections::HashMap;

use crate::{Checkpoint, JobKey, Status, Summary, Writer};

use crate::s3::names::{decode_meta, encode_meta};

const FORMAT: &str = "spotbatch-format";
const JOB: &str = "spotbatch-job";
const VERSION: &str = "spotbatch-version";
const STATUS: &str = "spotbatch-status";
const DETAIL: &str = "spotbatch-detail";
const DETAIL_OMITTED: &str = "spotbatch-detail-omitted";
const UPDATED: &str = "spotbatch-updated-ms";
const CHUNKS: &str = "spotbatch-chunks";

const MAX_JOB: usize = 1024;
const MAX_DETAIL: usize = 256;

/// The metadata for a checkpoint.
pub(crate) fn of(checkpoint: &Checkpoint) -> HashMap<String, String> {
    let mut meta = HashMap::new();
    meta.insert(FORMAT.to_owned(), "1".to_owned());
    let job = encode_meta(checkpoint.job.as_str());
    if job.len() <= MAX_JOB {
        meta.insert(JOB.to_owned(), job);
    }
    meta.insert(VERSION.to_owned(), checkpoint.version.to_string());
    meta.insert(STATUS.to_owned(), checkpoint.status.name().to_owned());
    let detail = match &checkpoint.status {
        Status::Interrupted { source } => source.as_str(),
        Status::Failed { message } => message.as_str(),
        _ => "",
    };
    if !detail.is_empty() {
        let detail = encode_meta(detail);
        if detail.len() <= MAX_DETAIL {
            meta.insert(DETAIL.to_owned(), detail);
        } else {
            meta.insert(DETAIL_OMITTED.to_owned(), "true".to_owned());
        }
    }
    meta.insert(UPDATED.to_owned(), checkpoint.updated_ms.to_string());
    meta.insert(CHUNKS.to_owned(), checkpoint.counters.chunks.to_string());
    meta
}

/// The listing a checkpoint's metadata tells, or `None` when it does not tell all.
pub(crate) fn summary(meta: &HashMap<String, String>) -> Option<Summary> {
    // Servers return header names in any case.
    let get = |name: &str| {
        meta.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if get(FORMAT)? != "1" || get(DETAIL_OMITTED).is_some() {
        return None;
    }
    let job = JobKey::new(decode_meta(get(JOB)?)?).ok()?;
    let detail = get(DETAIL).map_or(Some(String::new()), decode_meta)?;
    let status = match get(STATUS)? {
        "running" => Status::Running,
        "completed" => Status::Completed,
        "interrupted" => Status::Interrupted { source: detail },
        "failed" => Status::Failed { message: detail },
        _ => return None,
    };
    // `Summary` has no public constructor: build it from a stand-in checkpoint.
    let mut stand_in = Checkpoint::new(job, Writer::this_process());
    stand_in.version = get(VERSION)?.parse().ok()?;
    stand_in.status = status;
    stand_in.updated_ms = get(UPDATED)?.parse().ok()?;
    stand_in.counters.chunks = get(CHUNKS)?.parse().ok()?;
    Some(Summary::from(&stand_in))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(job: &str, status: Status) -> Checkpoint {
        let mut c = Checkpoint::new(JobKey::new(job).unwrap(), Writer::this_process());
        c.version = 42;
        c.status = status;
        c.counters.chunks = 17;
        c
    }

    #[test]
    fn metadata_tells_the_summary() {
        for status in [
            Status::Running,
            Status::Completed,
            Status::Interrupted {
                source: "SIGTERM".into(),
            },
            Status::Failed {
                message: "boom ✗: 100% wrong".into(),
            },
        ] {
            let c = checkpoint("etl/2026 é", status);
            let meta = of(&c);
            assert!(meta.values().all(|v| v.is_ascii()), "{meta:?}");
            assert_eq!(summary(&meta), Some(Summary::from(&c)));
        }
    }

    #[test]
    fn what_does_not_fit_is_read_from_the_body() {
        let long = checkpoint(
            "job",
            Status::Failed {
                message: "x".repeat(300),
            },
        );
        assert_eq!(summary(&of(&long)), None);
        let long_key = checkpoint(&"ü".repeat(300), Status::Running);
        assert_eq!(summary(&of(&long_key)), None);
        let total: usize = of(&checkpoint(&"k".repeat(1024), Status::Completed))
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        assert!(total < 2048, "{total} bytes of metadata");
        assert_eq!(summary(&HashMap::new()), None);
    }
}
