output "cluster_arn" {
  description = "ECS cluster the job runs in."
  value       = aws_ecs_cluster.this.arn
}

output "task_definition_arn" {
  description = "Current revision of the job's task definition."
  value       = aws_ecs_task_definition.job.arn
}

output "checkpoint_store_url" {
  description = "SPOTBATCH_STORE of the job: where its checkpoints are."
  value       = local.store_url
}

output "checkpoint_bucket" {
  description = "The checkpoint bucket."
  value       = aws_s3_bucket.checkpoints.bucket
}

output "grace_seconds" {
  description = "The runner's --grace: stop_timeout minus grace_margin."
  value       = local.grace
}

output "task_role_arn" {
  description = "Role of the running job (least privilege on the checkpoint prefix and the EFS access point)."
  value       = aws_iam_role.task.arn
}

output "execution_role_arn" {
  description = "Role ECS uses to pull the image and write logs."
  value       = aws_iam_role.execution.arn
}

output "log_group_name" {
  description = "CloudWatch Logs group of the job."
  value       = aws_cloudwatch_log_group.job.name
}

output "schedule_arn" {
  description = "EventBridge Scheduler schedule that starts the job."
  value       = aws_scheduler_schedule.job.arn
}

output "efs_file_system_id" {
  description = "EFS file system holding the job's output file (/data)."
  value       = aws_efs_file_system.data.id
}

output "task_security_group_id" {
  description = "Security group of the job's tasks (e.g. for `aws ecs run-task` by hand, see deploy/ecs/run-task.json)."
  value       = aws_security_group.task.id
}
