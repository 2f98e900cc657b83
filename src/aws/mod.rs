//! What the runner learns from AWS's link-local metadata endpoints.

mod ecs;
mod http;
mod imds;

pub use ecs::{EcsTask, ECS_METADATA_VAR};
pub use imds::Ec2SpotNotices;
