# A spotbatch job as a Fargate Spot task started by EventBridge Scheduler, with
# its checkpoints in S3 and its output file on EFS. See deploy/README.md.
#
#   terraform init
#   terraform apply -var image=... -var vpc_id=... -var 'subnet_ids=["subnet-..."]' \
#                   -var checkpoint_bucket_name=...

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account = data.aws_caller_identity.current.account_id
  region  = data.aws_region.current.name

  # The runner's grace period: a few seconds under the container's stopTimeout,
  # so the job exits with its final checkpoint before ECS sends SIGKILL.
  grace = var.stop_timeout - var.grace_margin

  store_url = "s3://${aws_s3_bucket.checkpoints.bucket}/${var.checkpoint_prefix}"

  # Fargate Spot: the task gets SIGTERM with a two-minute warning.
  capacity_provider = "FARGATE_SPOT"

  tags = merge({ app = var.name }, var.tags)
}

# ---------------------------------------------------------------------------
# ECS cluster with the Fargate Spot capacity provider
# ---------------------------------------------------------------------------

resource "aws_ecs_cluster" "this" {
  name = var.name
  tags = local.tags
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]

  default_capacity_provider_strategy {
    capacity_provider = local.capacity_provider
    weight            = 1
  }
}

resource "aws_cloudwatch_log_group" "job" {
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
  tags              = local.tags
}

# ---------------------------------------------------------------------------
# Checkpoint bucket: private, versioned, encrypted, TLS only
# ---------------------------------------------------------------------------

resource "aws_s3_bucket" "checkpoints" {
  bucket = var.checkpoint_bucket_name
  tags   = local.tags
}

resource "aws_s3_bucket_ownership_controls" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "checkpoints" {
  bucket                  = aws_s3_bucket.checkpoints.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# A checkpoint overwritten by mistake (a `restart`, a bad deploy) can be
# recovered from an earlier version.
resource "aws_s3_bucket_versioning" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id
  versioning_configuration {
    status = "Enabled"
  }
}

# SSE-S3. With SSE-KMS and a customer managed key, the task role also needs
# kms:GenerateDataKey and kms:Decrypt on that key.
resource "aws_s3_bucket_server_side_encryption_configuration" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

# Every checkpoint save makes a new version: keep replaced versions for a few
# days only.
resource "aws_s3_bucket_lifecycle_configuration" "checkpoints" {
  bucket     = aws_s3_bucket.checkpoints.id
  depends_on = [aws_s3_bucket_versioning.checkpoints]

  rule {
    id     = "expire-replaced-checkpoints"
    status = "Enabled"
    filter {
      prefix = "${var.checkpoint_prefix}/"
    }
    noncurrent_version_expiration {
      noncurrent_days = var.checkpoint_noncurrent_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "checkpoints_bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.checkpoints.arn,
      "${aws_s3_bucket.checkpoints.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "checkpoints" {
  bucket     = aws_s3_bucket.checkpoints.id
  policy     = data.aws_iam_policy_document.checkpoints_bucket.json
  depends_on = [aws_s3_bucket_public_access_block.checkpoints]
}

# ---------------------------------------------------------------------------
# Network: the task reaches S3, ECR and CloudWatch Logs; EFS only from the task
# ---------------------------------------------------------------------------

resource "aws_security_group" "task" {
  name        = "${var.name}-task"
  description = "spotbatch job tasks: outbound only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_egress_rule" "task_all" {
  security_group_id = aws_security_group.task.id
  description       = "S3, ECR, CloudWatch Logs, EFS"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_security_group" "efs" {
  name        = "${var.name}-efs"
  description = "spotbatch job output file system: NFS from the job's tasks"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "efs_from_task" {
  security_group_id            = aws_security_group.efs.id
  description                  = "NFS from the job's tasks"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = aws_security_group.task.id
}

# ---------------------------------------------------------------------------
# EFS for the job's output file. The quickstart writes a local file whose
# length rides in the checkpoint; a task resumed on new Fargate capacity must
# find that file again, so it lives on EFS. A job whose outputs go to S3 or a
# database does not need this section.
# ---------------------------------------------------------------------------

resource "aws_efs_file_system" "data" {
  creation_token = var.name
  encrypted      = true
  tags           = merge(local.tags, { Name = var.name })
}

resource "aws_efs_mount_target" "data" {
  for_each        = toset(var.subnet_ids)
  file_system_id  = aws_efs_file_system.data.id
  subnet_id       = each.value
  security_groups = [aws_security_group.efs.id]
}

# The image runs as uid/gid 65532 (distroless "nonroot"); the access point maps
# every client to it and roots it in its own directory.
resource "aws_efs_access_point" "data" {
  file_system_id = aws_efs_file_system.data.id
  posix_user {
    uid = 65532
    gid = 65532
  }
  root_directory {
    path = "/${var.name}"
    creation_info {
      owner_uid   = 65532
      owner_gid   = 65532
      permissions = "0750"
    }
  }
  tags = local.tags
}

data "aws_iam_policy_document" "efs" {
  statement {
    sid       = "TaskRoleThroughAccessPoint"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [aws_efs_file_system.data.arn]
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.task.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.data.arn]
    }
  }
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["*"]
    resources = [aws_efs_file_system.data.arn]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_efs_file_system_policy" "data" {
  file_system_id = aws_efs_file_system.data.id
  policy         = data.aws_iam_policy_document.efs.json
}

# ---------------------------------------------------------------------------
# IAM
# ---------------------------------------------------------------------------

data "aws_iam_policy_document" "ecs_tasks_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${data.aws_partition.current.partition}:ecs:${local.region}:${local.account}:*"]
    }
  }
}

# Execution role: used by ECS itself to pull the image and write the logs.
resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# Task role: what the job itself may do. Least privilege: read, write and
# delete objects under the checkpoint prefix only; list the bucket only under
# that prefix (the S3 store lists its prefix, and S3 answers 404 rather than
# 403 for a checkpoint that does not exist yet only to a caller allowed to
# list); mount and write the EFS file system only through the access point.
data "aws_iam_policy_document" "task" {
  statement {
    sid       = "CheckpointObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.checkpoints.arn}/${var.checkpoint_prefix}/*"]
  }
  statement {
    sid       = "ListCheckpointPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.checkpoints.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.checkpoint_prefix}/*"]
    }
  }
  statement {
    sid       = "OutputFileSystem"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [aws_efs_file_system.data.arn]
    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.data.arn]
    }
  }
}

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "task" {
  name   = "checkpoints"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

# Launcher role: EventBridge Scheduler (the schedule) and EventBridge (the
# resume-after-interruption rule) start the task with it.
data "aws_iam_policy_document" "launcher_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com", "events.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

data "aws_iam_policy_document" "launcher" {
  statement {
    sid       = "RunTheJobTask"
    actions   = ["ecs:RunTask"]
    resources = ["${aws_ecs_task_definition.job.arn_without_revision}:*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }
  statement {
    sid       = "PassTheJobRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.task.arn, aws_iam_role.execution.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "launcher" {
  name               = "${var.name}-launcher"
  assume_role_policy = data.aws_iam_policy_document.launcher_trust.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "launcher" {
  name   = "run-task"
  role   = aws_iam_role.launcher.id
  policy = data.aws_iam_policy_document.launcher.json
}

# ---------------------------------------------------------------------------
# The task definition (deploy/ecs/task-definition.json, with the values above)
# ---------------------------------------------------------------------------

resource "aws_ecs_task_definition" "job" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  # Fargate Spot runs X86_64 Linux tasks only.
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([
    {
      name      = "job"
      image     = var.image
      essential = true
      # No entryPoint: the image's exec-form ENTRYPOINT ["/app/quickstart"]
      # stays, so the job gets SIGTERM itself.
      command = concat(["--grace", tostring(local.grace), "--out", "/data/quickstart.out"], var.job_args)
      environment = [
        { name = "SPOTBATCH_STORE", value = local.store_url },
        { name = "RUST_LOG", value = "info" },
      ]
      # Seconds from SIGTERM to SIGKILL (default 30, at most 120 on Fargate).
      stopTimeout = var.stop_timeout
      # An init process as PID 1 that forwards signals and reaps zombies, for
      # jobs that run child processes.
      linuxParameters = {
        initProcessEnabled = true
      }
      readonlyRootFilesystem = true
      mountPoints = [
        { sourceVolume = "data", containerPath = "/data", readOnly = false },
      ]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          "awslogs-group"         = aws_cloudwatch_log_group.job.name
          "awslogs-region"        = local.region
          "awslogs-stream-prefix" = "job"
        }
      }
    },
  ])

  volume {
    name = "data"
    efs_volume_configuration {
      file_system_id     = aws_efs_file_system.data.id
      transit_encryption = "ENABLED"
      authorization_config {
        access_point_id = aws_efs_access_point.data.id
        iam             = "ENABLED"
      }
    }
  }

  tags = local.tags
}

# ---------------------------------------------------------------------------
# Start it on a schedule, on Fargate Spot
# ---------------------------------------------------------------------------

resource "aws_scheduler_schedule" "job" {
  name                         = var.name
  schedule_expression          = var.schedule_expression
  schedule_expression_timezone = var.schedule_timezone

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_ecs_cluster.this.arn
    role_arn = aws_iam_role.launcher.arn

    ecs_parameters {
      task_definition_arn = aws_ecs_task_definition.job.arn
      task_count          = 1

      capacity_provider_strategy {
        capacity_provider = local.capacity_provider
        weight            = 1
      }

      network_configuration {
        subnets          = var.subnet_ids
        security_groups  = [aws_security_group.task.id]
        assign_public_ip = var.assign_public_ip
      }
    }

    retry_policy {
      maximum_event_age_in_seconds = 3600
      maximum_retry_attempts       = 3
    }
  }

  depends_on = [
    aws_ecs_cluster_capacity_providers.this,
    aws_efs_mount_target.data,
    aws_iam_role_policy.launcher,
  ]
}

# ---------------------------------------------------------------------------
# Resume right after a Fargate Spot interruption instead of at the next
# scheduled time: when a task of this job stops with stopCode SpotInterruption
# (it has saved its final checkpoint and released its lease by then), start a
# new one.
# ---------------------------------------------------------------------------

resource "aws_cloudwatch_event_rule" "spot_interrupted" {
  count       = var.resume_on_spot_interruption ? 1 : 0
  name        = "${var.name}-spot-interrupted"
  description = "A ${var.name} task was stopped by a Fargate Spot interruption"
  event_pattern = jsonencode({
    source        = ["aws.ecs"]
    "detail-type" = ["ECS Task State Change"]
    detail = {
      clusterArn        = [aws_ecs_cluster.this.arn]
      taskDefinitionArn = [{ prefix = "${aws_ecs_task_definition.job.arn_without_revision}:" }]
      lastStatus        = ["STOPPED"]
      stopCode          = ["SpotInterruption"]
    }
  })
  tags = local.tags
}

resource "aws_cloudwatch_event_target" "resume" {
  count    = var.resume_on_spot_interruption ? 1 : 0
  rule     = aws_cloudwatch_event_rule.spot_interrupted[0].name
  arn      = aws_ecs_cluster.this.arn
  role_arn = aws_iam_role.launcher.arn

  ecs_target {
    task_definition_arn = aws_ecs_task_definition.job.arn
    task_count          = 1

    capacity_provider_strategy {
      capacity_provider = local.capacity_provider
      weight            = 1
    }

    network_configuration {
      subnets          = var.subnet_ids
      security_groups  = [aws_security_group.task.id]
      assign_public_ip = var.assign_public_ip
    }
  }
}
