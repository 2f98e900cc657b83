//! What of a multipart upload rides in the job's state.

use serde::{Deserialize, Serialize};

/// Where a [`MultipartSink`](super::MultipartSink)'s output stands: the
/// multipart upload's id, its finished parts (numbers, ETags, sizes) and the
/// staged pieces of the part being filled. Put it in the job's
/// [`State`](crate::Job::State), from [`MultipartSink::mark`](super::MultipartSink::mark),
/// and hand it back to [`MultipartSink::resume`](super::MultipartSink::resume).
///
/// `Default` is the state of a job that has written nothing yet. A state is
/// about 60 bytes per finished part (at most 10,000 parts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartState {
    pub(super) upload: Option<UploadState>,
}

impl MultipartState {
    /// The multipart upload's id; `None` before the first chunk's output.
    pub fn upload_id(&self) -> Option<&str> {
        self.upload.as_ref().map(|u| u.id.as_str())
    }

    /// The finished parts, in order.
    pub fn parts(&self) -> &[Part] {
        self.upload.as_ref().map_or(&[], |u| u.parts.as_slice())
    }

    /// The bytes of output this state covers: the finished parts and the
    /// staged pieces of the part being filled.
    pub fn len(&self) -> u64 {
        self.upload.as_ref().map_or(0, |u| {
            u.parts.iter().map(|p| p.size).sum::<u64>() + u.tail.iter().map(|s| s.len).sum::<u64>()
        })
    }

    /// Whether the state covers no output.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The upload a state continues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct UploadState {
    /// The upload id CreateMultipartUpload returned.
    pub(super) id: String,
    /// A random token: the finished object's `x-amz-meta-spotbatch-upload`
    /// (how a later run knows the upload became the object) and the name of
    /// the upload's staging directory.
    pub(super) token: String,
    /// The size of every part but the last, in bytes.
    pub(super) part_size: u64,
    /// The finished parts, numbered from 1 without gaps.
    pub(super) parts: Vec<Part>,
    /// The pieces of the part being filled, in staging objects, in order.
    pub(super) tail: Vec<Piece>,
}

/// A finished part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub(super) number: u16,
    pub(super) e_tag: String,
    pub(super) size: u64,
    /// The part's CRC-32 (base64) as the server computed it, when it did.
    pub(super) crc32: Option<String>,
}

impl Part {
    /// The part number, from 1.
    pub fn number(&self) -> u16 {
        self.number
    }

    /// The ETag UploadPart returned.
    pub fn e_tag(&self) -> &str {
        &self.e_tag
    }

    /// The part's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// A piece of the part being filled, in a staging object named after its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Piece {
    /// The piece's first byte's offset in the output.
    pub(super) offset: u64,
    /// The bytes of the staging object the state covers (it may hold more).
    pub(super) len: u64,
}

impl UploadState {
    /// Checks what resuming relies on; the reason when it does not hold.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.id.is_empty() || self.token.is_empty() {
            return Err("the upload id or token is empty".into());
        }
        if !(super::MIN_PART_SIZE..=super::MAX_PART_SIZE).contains(&self.part_size) {
            return Err(format!(
                "the part size {} is outside S3's 5 MiB to 5 GiB",
                self.part_size
            ));
        }
        for (i, part) in self.parts.iter().enumerate() {
            if usize::from(part.number) != i + 1 {
                return Err(format!(
                    "part {} is at place {} of the parts",
                    part.number,
                    i + 1
                ));
            }
            if part.size != self.part_size || part.e_tag.is_empty() {
                return Err(format!(
                    "part {} is {} bytes (expected {}) with ETag {:?}",
                    part.number, part.size, self.part_size, part.e_tag
                ));
            }
        }
        let mut at = self.parts.len() as u64 * self.part_size;
        for piece in &self.tail {
            if piece.offset != at || piece.len == 0 {
                return Err(format!(
                    "a staged piece of {} bytes at offset {} does not follow the output's first {at} bytes",
                    piece.len, piece.offset
                ));
            }
            at += piece.len;
        }
        let open = at - self.parts.len() as u64 * self.part_size;
        if open >= self.part_size {
            return Err(format!(
                "the staged pieces hold {open} bytes, a whole part or more"
            ));
        }
        Ok(())
    }
}
