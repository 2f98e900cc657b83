variable "name" {
  description = "Name of the job: ECS cluster, task family, roles, log group, schedule and security groups are named after it."
  type        = string
  default     = "spotbatch-quickstart"
}

variable "image" {
  description = "Container image built from deploy/Dockerfile, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/spotbatch-quickstart:latest (linux/amd64: Fargate Spot runs X86_64 only)."
  type        = string
}

variable "vpc_id" {
  description = "VPC the task and the EFS mount targets live in."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets for the task and the EFS mount targets (at most one per Availability Zone). Private subnets need a NAT gateway or VPC endpoints for S3, ECR and CloudWatch Logs."
  type        = list(string)
}

variable "assign_public_ip" {
  description = "Give the task a public IP (only for public subnets without a NAT gateway)."
  type        = bool
  default     = false
}

variable "checkpoint_bucket_name" {
  description = "Name of the S3 bucket created for checkpoints (globally unique)."
  type        = string
}

variable "checkpoint_prefix" {
  description = "Key prefix of the checkpoints in the bucket, without a trailing slash. The task role may touch nothing outside it."
  type        = string
  default     = "checkpoints"

  validation {
    condition     = length(var.checkpoint_prefix) > 0 && !startswith(var.checkpoint_prefix, "/") && !endswith(var.checkpoint_prefix, "/")
    error_message = "checkpoint_prefix must be non-empty, with no leading or trailing slash (e.g. \"checkpoints\")."
  }
}

variable "checkpoint_noncurrent_days" {
  description = "Days to keep replaced checkpoint versions (the bucket is versioned; the job saves a new version every few seconds)."
  type        = number
  default     = 7
}

variable "stop_timeout" {
  description = "ECS stopTimeout of the job's container: seconds from SIGTERM to SIGKILL. Fargate allows at most 120; Fargate Spot's notice is two minutes."
  type        = number
  default     = 120

  validation {
    condition     = var.stop_timeout >= 2 && var.stop_timeout <= 120
    error_message = "stop_timeout must be between 2 and 120 seconds (the Fargate maximum)."
  }
}

variable "grace_margin" {
  description = "Seconds by which the runner's --grace is shorter than stop_timeout, so the job exits with its final checkpoint before SIGKILL."
  type        = number
  default     = 5

  validation {
    condition     = var.grace_margin >= 1 && var.grace_margin <= 10
    error_message = "grace_margin must be between 1 and 10 seconds."
  }
}

variable "cpu" {
  description = "Task CPU units (Fargate sizes: 256, 512, 1024, ...)."
  type        = number
  default     = 512
}

variable "memory" {
  description = "Task memory in MiB (must fit the CPU size)."
  type        = number
  default     = 1024
}

variable "job_args" {
  description = "Further arguments for the job, after --grace and --out."
  type        = list(string)
  default     = []
}

variable "schedule_expression" {
  description = "When EventBridge Scheduler starts a task: rate(...), cron(...) or at(...). A run whose job is already complete exits 0 at once; one that finds another task still holding the job exits 73."
  type        = string
  default     = "rate(1 hour)"
}

variable "schedule_timezone" {
  description = "Time zone of a cron(...) schedule expression."
  type        = string
  default     = "UTC"
}

variable "resume_on_spot_interruption" {
  description = "Start a new task as soon as one is stopped by a Fargate Spot interruption (ECS task state change event, stopCode SpotInterruption), rather than at the next scheduled time."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Days to keep the job's logs."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
