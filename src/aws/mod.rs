//! AWS platform integration (feature `aws`): EC2 Spot interruption notices
//! from instance metadata, and the ECS task's identity from the task
//! metadata endpoint.
//!
//! [`Ec2SpotNotices`] asks instance metadata through the AWS SDK's own IMDSv2
//! client ([`aws_config::imds::Client`](https://docs.rs/aws-config/latest/aws_config/imds/client/struct.Client.html)); [`EcsTask`] reads the ECS task
//! metadata endpoint v4 with the HTTP/1 client the SDK already compiles
//! (hyper through hyper-util). The runner calls [`EcsTask::from_environment`]
//! itself at start (see [`Runner::ecs_identity`](crate::Runner::ecs_identity)).

mod ecs;
mod imds;

pub use ecs::{EcsMetadataError, EcsTask, ECS_METADATA_VAR};
pub use imds::Ec2SpotNotices;

/// `error`, then each of its sources, joined with `: ` (the SDK's and
/// hyper's errors keep the detail, e.g. "connection refused", in their sources).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        // Some errors repeat their source's text in their own.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}
