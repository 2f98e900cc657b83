# Offline checks of this configuration against a mocked AWS provider: no AWS
# account, credentials or network needed (Terraform >= 1.7 for mock_provider).
#
#   cd deploy/terraform && terraform init && terraform test
#
# The mocks only give computed attributes plausible values (ARNs that the
# provider's own validation accepts); nothing is created anywhere.

mock_provider "aws" {
  mock_data "aws_region" {
    defaults = { name = "us-east-1" }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{}" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:us-east-1:123456789012:cluster/spotbatch-quickstart" }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = {
      arn                  = "arn:aws:ecs:us-east-1:123456789012:task-definition/spotbatch-quickstart:1"
      arn_without_revision = "arn:aws:ecs:us-east-1:123456789012:task-definition/spotbatch-quickstart"
    }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/spotbatch-quickstart-x" }
  }
  mock_resource "aws_s3_bucket" {
    defaults = { arn = "arn:aws:s3:::my-spotbatch-checkpoints", bucket = "my-spotbatch-checkpoints" }
  }
  mock_resource "aws_efs_file_system" {
    defaults = { arn = "arn:aws:elasticfilesystem:us-east-1:123456789012:file-system/fs-0123456789abcdef0", id = "fs-0123456789abcdef0" }
  }
  mock_resource "aws_efs_access_point" {
    defaults = { arn = "arn:aws:elasticfilesystem:us-east-1:123456789012:access-point/fsap-0123456789abcdef0", id = "fsap-0123456789abcdef0" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:us-east-1:123456789012:log-group:/ecs/spotbatch-quickstart" }
  }
  mock_resource "aws_scheduler_schedule" {
    defaults = { arn = "arn:aws:scheduler:us-east-1:123456789012:schedule/default/spotbatch-quickstart" }
  }
  mock_resource "aws_cloudwatch_event_rule" {
    defaults = { arn = "arn:aws:events:us-east-1:123456789012:rule/spotbatch-quickstart-spot-interrupted" }
  }
}

variables {
  image                  = "123456789012.dkr.ecr.us-east-1.amazonaws.com/spotbatch-quickstart:latest"
  vpc_id                 = "vpc-0123456789abcdef0"
  subnet_ids             = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  checkpoint_bucket_name = "my-spotbatch-checkpoints"
}

run "plan" {
  command = apply
  assert {
    condition     = jsondecode(aws_ecs_task_definition.job.container_definitions)[0].stopTimeout == 120
    error_message = "stopTimeout"
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.job.container_definitions)[0].command == ["--grace", "115", "--out", "/data/quickstart.out"]
    error_message = "command"
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.job.container_definitions)[0].linuxParameters.initProcessEnabled == true
    error_message = "init"
  }
  assert {
    condition     = [for s in aws_scheduler_schedule.job.target[0].ecs_parameters[0].capacity_provider_strategy : s.capacity_provider] == ["FARGATE_SPOT"]
    error_message = "spot"
  }
  assert {
    condition     = output.checkpoint_store_url == "s3://my-spotbatch-checkpoints/checkpoints"
    error_message = "store url"
  }
  assert {
    condition     = length(aws_efs_mount_target.data) == 2
    error_message = "mount targets"
  }
  assert {
    condition     = jsondecode(aws_cloudwatch_event_rule.spot_interrupted[0].event_pattern).detail.stopCode == ["SpotInterruption"]
    error_message = "rule"
  }
}

run "bad_stop_timeout" {
  command = plan
  variables {
    stop_timeout = 121
  }
  expect_failures = [var.stop_timeout]
}
