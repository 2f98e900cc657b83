//! The user metadata stored with each checkpoint object, so `list` can tell
//! a job's version and status from a HeadObject.
//!
//! One header, `x-amz-meta-spotbatch`, whose value is fields separated by
//! single spaces:
//!
//! ```text
//! 2 <version> <status> <updated-ms> <chunks> <job> [<detail>]
//! ```
//!
//! - `2`: the format.
//! - `version`: the checkpoint's version; `status`: `running`, `interrupted`,
//!   `completed` or `failed`; `updated-ms`: when it was written, ms since the
//!   Unix epoch; `chunks`: chunks done.
//! - `job`: the job key, and `detail`: the interruption source or failure
//!   message (absent when empty), both percent-encoded (so without spaces).
//!
//! A checkpoint whose encoded job key is over 1024 bytes or whose detail is
//! over 256 bytes gets no such header; the whole always fits AWS's 2 KB limit
//! on user metadata. One header rather than one per field: each header is
//! signed, sent and stored on its own, and a save pays for every one.
//!
//! Objects written before this format carry format 1, one header per field
//! (`x-amz-meta-spotbatch-format: 1`, `-job`, `-version`, `-status`,
//! `-detail` or `-detail-omitted`, `-updated-ms`, `-chunks`), which is still
//! read. An object whose metadata is missing or incomplete is listed from
//! its body instead.

use std::collections::HashMap;

use crate::{Checkpoint, JobKey, Status, Summary, Writer};

use crate::s3::names::{decode_meta, encode_meta};

/// The header (after `x-amz-meta-`) of format 2.
const HEADER: &str = "spotbatch";
const FORMAT: &str = "2";

/// Format 1's headers.
mod v1 {
    pub(super) const FORMAT: &str = "spotbatch-format";
    pub(super) const JOB: &str = "spotbatch-job";
    pub(super) const VERSION: &str = "spotbatch-version";
    pub(super) const STATUS: &str = "spotbatch-status";
    pub(super) const DETAIL: &str = "spotbatch-detail";
    pub(super) const DETAIL_OMITTED: &str = "spotbatch-detail-omitted";
    pub(super) const UPDATED: &str = "spotbatch-updated-ms";
    pub(super) const CHUNKS: &str = "spotbatch-chunks";
}

const MAX_JOB: usize = 1024;
const MAX_DETAIL: usize = 256;

fn detail(status: &Status) -> &str {
    match status {
        Status::Interrupted { source } => source,
        Status::Failed { message } => message,
        _ => "",
    }
}

/// The metadata for a checkpoint: one header, or none when the job key or
/// the status detail is too long for it.
pub(crate) fn of(checkpoint: &Checkpoint) -> HashMap<String, String> {
    let job = encode_meta(checkpoint.job.as_str());
    let detail = encode_meta(detail(&checkpoint.status));
    if job.len() > MAX_JOB || detail.len() > MAX_DETAIL {
        return HashMap::new();
    }
    let mut value = format!(
        "{FORMAT} {} {} {} {} {job}",
        checkpoint.version,
        checkpoint.status.name(),
        checkpoint.updated_ms,
        checkpoint.counters.chunks,
    );
    if !detail.is_empty() {
        value.push(' ');
        value.push_str(&detail);
    }
    HashMap::from([(HEADER.to_owned(), value)])
}

/// A summary from its fields, as metadata tells them.
fn summary_of(
    job: &str,
    version: &str,
    status: &str,
    detail: &str,
    updated_ms: &str,
    chunks: &str,
) -> Option<Summary> {
    let job = JobKey::new(decode_meta(job)?).ok()?;
    let detail = decode_meta(detail)?;
    let status = match status {
        "running" => Status::Running,
        "completed" => Status::Completed,
        "interrupted" => Status::Interrupted { source: detail },
        "failed" => Status::Failed { message: detail },
        _ => return None,
    };
    // `Summary` has no public constructor: build it from a stand-in checkpoint.
    let mut stand_in = Checkpoint::new(job, Writer::this_process());
    stand_in.version = version.parse().ok()?;
    stand_in.status = status;
    stand_in.updated_ms = updated_ms.parse().ok()?;
    stand_in.counters.chunks = chunks.parse().ok()?;
    Some(Summary::from(&stand_in))
}

/// The listing a checkpoint's metadata tells, or `None` when it does not tell all.
pub(crate) fn summary(meta: &HashMap<String, String>) -> Option<Summary> {
    // Servers return header names in any case.
    let get = |name: &str| {
        meta.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if let Some(value) = get(HEADER) {
        let fields: Vec<&str> = value.split(' ').collect();
        return match fields.as_slice() {
            [FORMAT, version, status, updated, chunks, job] => {
                summary_of(job, version, status, "", updated, chunks)
            }
            [FORMAT, version, status, updated, chunks, job, detail] => {
                summary_of(job, version, status, detail, updated, chunks)
            }
            _ => None,
        };
    }
    if get(v1::FORMAT)? != "1" || get(v1::DETAIL_OMITTED).is_some() {
        return None;
    }
    summary_of(
        get(v1::JOB)?,
        get(v1::VERSION)?,
        get(v1::STATUS)?,
        get(v1::DETAIL).unwrap_or_default(),
        get(v1::UPDATED)?,
        get(v1::CHUNKS)?,
    )
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

    #[test]
    fn one_header_of_space_separated_fields() {
        let c = checkpoint(
            "etl/2026 11",
            Status::Interrupted {
                source: "max runtime".into(),
            },
        );
        let meta = of(&c);
        assert_eq!(meta.len(), 1, "{meta:?}");
        assert_eq!(
            meta[HEADER],
            format!(
                "2 42 interrupted {} 17 etl%2F2026%2011 max%20runtime",
                c.updated_ms
            )
        );
        // A value that is not format 2 tells nothing.
        for bad in [
            "3 42 running 1 17 job",
            "2 42 running 1 17",
            "2 x running 1 17 job",
        ] {
            let meta = HashMap::from([("Spotbatch".to_owned(), bad.to_owned())]);
            assert_eq!(summary(&meta), None, "{bad}");
        }
    }

    #[test]
    fn format_1_is_still_read() {
        let c = checkpoint(
            "etl/2026 é",
            Status::Failed {
                message: "boom".into(),
            },
        );
        let meta: HashMap<String, String> = [
            ("spotbatch-format", "1".to_owned()),
            ("spotbatch-job", encode_meta(c.job.as_str())),
            ("spotbatch-version", "42".to_owned()),
            ("Spotbatch-Status", "failed".to_owned()),
            ("spotbatch-detail", "boom".to_owned()),
            ("spotbatch-updated-ms", c.updated_ms.to_string()),
            ("spotbatch-chunks", "17".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(summary(&meta), Some(Summary::from(&c)));
        let mut omitted = meta.clone();
        omitted.insert("spotbatch-detail-omitted".into(), "true".into());
        assert_eq!(summary(&omitted), None);
    }
}
