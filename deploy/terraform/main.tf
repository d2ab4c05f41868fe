# tswatch on AWS: the same resources, policies and outputs as
# deploy/cloudformation/tswatch.yaml (deploy/tests/test_static.py compares
# the two, resource by resource and statement by statement).

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

data "aws_ssm_parameter" "image" {
  name = var.image_id
}

locals {
  bucket_arn = "arn:${data.aws_partition.current.partition}:s3:::${var.bucket_name}"
}

# ---------------------------------------------------------------- the bucket

resource "aws_s3_bucket" "data" {
  #checkov:skip=CKV_AWS_18:Access logging needs a second bucket and costs per request; CloudTrail data events are the place for it where required.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles the storage cost; the bucket is versioned, and tswatch's state rebuilds from processed/ if lost.
  #checkov:skip=CKV_AWS_145:SSE-S3 (AES256) rather than a customer KMS key: no key cost, and no kms: grants for the role.
  bucket = var.bucket_name
  # The data outlives the stack (CloudFormation: DeletionPolicy Retain).
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket                  = aws_s3_bucket.data.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
}

resource "aws_s3_bucket_notification" "data" {
  bucket = aws_s3_bucket.data.id
  topic {
    topic_arn     = aws_sns_topic.events.arn
    events        = ["s3:ObjectCreated:*"]
    filter_prefix = "raw/"
    filter_suffix = ".csv"
  }
  # S3 checks that it may publish to the topic when the notification is set.
  depends_on = [aws_sns_topic_policy.events]
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [local.bucket_arn, "${local.bucket_arn}/*"]
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

resource "aws_s3_bucket_policy" "data" {
  bucket = aws_s3_bucket.data.id
  policy = data.aws_iam_policy_document.bucket.json
  # A policy is refused while the public access block is being changed.
  depends_on = [aws_s3_bucket_public_access_block.data]
}

# ------------------------------------------------------ S3 -> SNS (-> SQS)

resource "aws_sns_topic" "events" {
  #checkov:skip=CKV_AWS_26:S3 cannot publish to a topic encrypted with the AWS-managed SNS key, and a customer key costs 1 USD a month; the messages carry object keys only.
  display_name = "tswatch S3 events"
}

data "aws_iam_policy_document" "topic" {
  statement {
    sid       = "AllowThisBucketOnly"
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.events.arn]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [local.bucket_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_sns_topic_policy" "events" {
  arn    = aws_sns_topic.events.arn
  policy = data.aws_iam_policy_document.topic.json
}

# HTTP mode: SNS calls the instance's /notify. Terraform waits until
# tswatch has confirmed the subscription.
resource "aws_sns_topic_subscription" "notify" {
  count                           = var.use_sqs ? 0 : 1
  topic_arn                       = aws_sns_topic.events.arn
  protocol                        = "http"
  endpoint                        = "http://${aws_instance.instance[0].public_dns}:${var.port}/notify"
  endpoint_auto_confirms          = true
  confirmation_timeout_in_minutes = 30
  # Deliveries retried for up to an hour (SNS's longest), so a restart
  # or an upgrade loses no event (reconciliation would find them too).
  delivery_policy = jsonencode({
    healthyRetryPolicy = {
      numRetries         = 60
      numNoDelayRetries  = 0
      minDelayTarget     = 20
      maxDelayTarget     = 60
      numMinDelayRetries = 3
      numMaxDelayRetries = 54
      backoffFunction    = "linear"
    }
  })
}

resource "aws_sqs_queue" "events" {
  count                      = var.use_sqs ? 1 : 0
  visibility_timeout_seconds = 60
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letters[0].arn
    maxReceiveCount     = var.max_receive_count
  })
}

resource "aws_sqs_queue" "dead_letters" {
  count                     = var.use_sqs ? 1 : 0
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

data "aws_iam_policy_document" "queue" {
  count = var.use_sqs ? 1 : 0
  statement {
    sid       = "AllowTheTopicOnly"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.events[0].arn]
    principals {
      type        = "Service"
      identifiers = ["sns.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_sns_topic.events.arn]
    }
  }
}

resource "aws_sqs_queue_policy" "events" {
  count     = var.use_sqs ? 1 : 0
  queue_url = aws_sqs_queue.events[0].id
  policy    = data.aws_iam_policy_document.queue[0].json
}

resource "aws_sns_topic_subscription" "queue" {
  count                = var.use_sqs ? 1 : 0
  topic_arn            = aws_sns_topic.events.arn
  protocol             = "sqs"
  endpoint             = aws_sqs_queue.events[0].arn
  raw_message_delivery = true
}

# ------------------------------------------------------------ the instance role

data "aws_iam_policy_document" "assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# Only the object operations tswatch performs, on the prefixes it uses
# (docs/deploy.md lists where in the code each one is made).
data "aws_iam_policy_document" "instance" {
  statement {
    sid       = "ListOwnPrefixes"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
    condition {
      test     = "StringLikeIfExists"
      variable = "s3:prefix"
      values   = ["raw/*", "processed/*", "state/*"]
    }
  }
  statement {
    sid     = "ReadBatchesOutputsAndState"
    effect  = "Allow"
    actions = ["s3:GetObject"]
    resources = [
      "${local.bucket_arn}/raw/*",
      "${local.bucket_arn}/processed/*",
      "${local.bucket_arn}/state/*",
    ]
  }
  statement {
    sid     = "WriteOutputsAndState"
    effect  = "Allow"
    actions = ["s3:PutObject"]
    resources = [
      "${local.bucket_arn}/processed/*",
      "${local.bucket_arn}/state/*",
    ]
  }
  statement {
    sid     = "AbortOwnUploads"
    effect  = "Allow"
    actions = ["s3:AbortMultipartUpload"]
    resources = [
      "${local.bucket_arn}/processed/*",
      "${local.bucket_arn}/state/staging/*",
    ]
  }
  statement {
    sid     = "DeleteStagingAndErrorRecords"
    effect  = "Allow"
    actions = ["s3:DeleteObject"]
    resources = [
      "${local.bucket_arn}/processed/*_error.json",
      "${local.bucket_arn}/state/staging/*",
    ]
  }
}

# SQS mode only: what the consumer calls on the queue, nothing else.
data "aws_iam_policy_document" "queue_consumer" {
  count = var.use_sqs ? 1 : 0
  statement {
    sid    = "ConsumeTheQueue"
    effect = "Allow"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
    ]
    resources = [aws_sqs_queue.events[0].arn]
  }
}

resource "aws_iam_role" "instance" {
  description        = "tswatch on EC2 - only the object operations it performs, on the prefixes it uses"
  assume_role_policy = data.aws_iam_policy_document.assume.json
}

resource "aws_iam_role_policy" "instance" {
  name   = "tswatch"
  role   = aws_iam_role.instance.id
  policy = data.aws_iam_policy_document.instance.json
}

resource "aws_iam_role_policy" "queue_consumer" {
  count  = var.use_sqs ? 1 : 0
  name   = "tswatch-queue"
  role   = aws_iam_role.instance.id
  policy = data.aws_iam_policy_document.queue_consumer[0].json
}

resource "aws_iam_instance_profile" "instance" {
  role = aws_iam_role.instance.name
}

# ---------------------------------------------------------- instance or group

resource "aws_security_group" "instance" {
  #checkov:skip=CKV_AWS_382:Egress to anywhere on the default rule: S3, SQS and the SNS certificate hosts have no fixed addresses.
  description = "tswatch API (and /notify for SNS)"
  ingress {
    description = "tswatch API"
    protocol    = "tcp"
    from_port   = var.port
    to_port     = var.port
    cidr_blocks = [var.api_cidr]
  }
  egress {
    description = "S3, SQS, SNS certificates and the release download"
    protocol    = "-1"
    from_port   = 0
    to_port     = 0
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_launch_template" "instance" {
  image_id      = data.aws_ssm_parameter.image.value
  instance_type = var.instance_type
  iam_instance_profile {
    arn = aws_iam_instance_profile.instance.arn
  }
  vpc_security_group_ids = [aws_security_group.instance.id]
  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    http_endpoint               = "enabled"
  }
  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size = 8
      volume_type = "gp3"
      encrypted   = true
    }
  }
  # The same cloud-init file the CloudFormation template carries.
  user_data = base64encode(templatefile("${path.module}/../cloud-init/user-data.yaml", {
    BucketName    = aws_s3_bucket.data.bucket
    Region        = data.aws_region.current.name
    Port          = var.port
    TopicArn      = aws_sns_topic.events.arn
    QueueSetting  = var.use_sqs ? "TSWATCH_SQS_QUEUE_URL=\"${aws_sqs_queue.events[0].url}\"" : ""
    ReleaseUrl    = var.release_url
    ReleaseSha256 = var.release_sha256
    SourceRepo    = var.source_repo
    SourceRef     = var.source_ref
    # Terraform has no signal to wait for: the HTTP subscription waits for
    # tswatch's confirmation instead (confirmation_timeout_in_minutes).
    ReadyCommand = "exit $status"
  }))
  lifecycle {
    precondition {
      condition     = var.release_url != "" || var.source_repo != ""
      error_message = "Give release_url (a tswatch release) or source_repo (to build from source)."
    }
  }
}

# HTTP mode: one instance, which the SNS subscription calls. A new
# launch-template version (a new release_url, say) replaces it.
resource "aws_instance" "instance" {
  #checkov:skip=CKV_AWS_79:IMDSv2 is required in the launch template the instance is made from, which the check does not follow.
  #checkov:skip=CKV_AWS_8:The root volume is encrypted in the launch template the instance is made from, which the check does not follow.
  #checkov:skip=CKV2_AWS_41:The instance profile is set in the launch template the instance is made from, which the check does not follow.
  #checkov:skip=CKV_AWS_126:Detailed monitoring costs extra; basic monitoring and /ready are enough for one small instance.
  #checkov:skip=CKV_AWS_135:EBS optimisation is on by default for the current instance types and costs extra on old ones.
  count = var.use_sqs ? 0 : 1
  launch_template {
    id      = aws_launch_template.instance.id
    version = aws_launch_template.instance.latest_version
  }
}

# SQS mode: N instances sharing the queue, replaced one by one on a new
# launch-template version.
resource "aws_autoscaling_group" "instances" {
  count              = var.use_sqs ? 1 : 0
  availability_zones = data.aws_availability_zones.available.names
  min_size           = var.instance_count
  max_size           = var.instance_count
  desired_capacity   = var.instance_count
  launch_template {
    id      = aws_launch_template.instance.id
    version = aws_launch_template.instance.latest_version
  }
  depends_on = [aws_iam_role_policy.queue_consumer]
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 0
    }
  }
}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:The group may run in any zone of the region; a zone AWS adds is more room, not a risk.
  state = "available"
}
