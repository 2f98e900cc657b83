//! Who is running, in the platform's words: the ECS task ARN, recorded as the
//! writer of the run's checkpoints and in its run history. The one place the
//! runner meets platform code; with the feature `aws` off it asks nothing.

use tracing::info;

/// The variable ECS sets in every container of a task.
#[cfg(not(feature = "aws"))]
const ECS_METADATA_VAR: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// The task ARN when running as an ECS task (one GET of
/// `${ECS_CONTAINER_METADATA_URI_V4}/task`, at most 2 s); `None` off ECS, and
/// `None` with a warning when the endpoint does not answer as documented.
#[cfg(feature = "aws")]
pub(super) async fn task() -> Option<String> {
    use std::time::Duration;

    use crate::aws::EcsTask;

    match EcsTask::from_environment(Duration::from_secs(2)).await {
        Ok(Some(task)) => {
            info!(
                task = %task.task_arn,
                cluster = %task.cluster,
                family = %task.family,
                revision = %task.revision,
                zone = %task.availability_zone,
                launch_type = %task.launch_type,
                "running as an ECS task"
            );
            Some(task.task_arn)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "ECS task metadata unreadable: continuing without the task's identity");
            None
        }
    }
}

/// Built without the feature `aws`: nothing is asked. On ECS (the variable is
/// set) one line says why the task ARN is not recorded.
#[cfg(not(feature = "aws"))]
pub(super) async fn task() -> Option<String> {
    if std::env::var_os(ECS_METADATA_VAR).is_some() {
        info!(
            "{ECS_METADATA_VAR} is set but spotbatch was built without the `aws` feature: \
             the ECS task ARN is not recorded as the checkpoints' writer"
        );
    }
    None
}
