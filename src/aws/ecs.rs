//! ECS task identity from the task metadata endpoint v4.

use std::time::Duration;

use serde::Deserialize;

use super::http::{request, Endpoint};

/// The variable ECS sets in every container of a task (platform 1.4+ on
/// Fargate, agent 1.39+ on EC2).
pub const ECS_METADATA_VAR: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// Who this ECS task is, from `${ECS_CONTAINER_METADATA_URI_V4}/task`
/// ("Amazon ECS task metadata endpoint version 4" in AWS's docs).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EcsTask {
    /// The task ARN, e.g. `arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c`.
    #[serde(rename = "TaskARN")]
    pub task_arn: String,
    /// The cluster (name or ARN).
    #[serde(default)]
    pub cluster: String,
    /// The task definition family.
    #[serde(default)]
    pub family: String,
    /// The task definition revision.
    #[serde(default)]
    pub revision: String,
    /// The Availability Zone.
    #[serde(default)]
    pub availability_zone: String,
    /// `FARGATE` or `EC2`.
    #[serde(default)]
    pub launch_type: String,
}

impl EcsTask {
    /// Reads the task's identity when running on ECS: `Ok(None)` at once when
    /// [`ECS_METADATA_VAR`] is not set.
    ///
    /// # Errors
    ///
    /// A message naming the endpoint when it is set but does not answer
    /// within `limit` or answers something unreadable.
    pub async fn from_environment(limit: Duration) -> Result<Option<Self>, String> {
        let Ok(base) = std::env::var(ECS_METADATA_VAR) else {
            return Ok(None);
        };
        Self::fetch(&base, limit).await.map(Some)
    }

    /// Reads `{base}/task`.
    ///
    /// # Errors
    ///
    /// A message naming the endpoint and what went wrong.
    pub async fn fetch(base: &str, limit: Duration) -> Result<Self, String> {
        let endpoint = Endpoint::parse(base)?;
        let response = request(&endpoint, "GET", "/task", &[], limit)
            .await
            .map_err(|e| format!("{base}/task: {e}"))?;
        if response.status != 200 {
            return Err(format!("{base}/task answered {}", response.status));
        }
        serde_json::from_slice(&response.body).map_err(|e| format!("{base}/task: unreadable: {e}"))
    }
}
