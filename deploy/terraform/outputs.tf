# The same outputs as the CloudFormation template, in snake_case.

output "bucket_name" {
  description = "The data bucket (BUCKET_NAME)"
  value       = aws_s3_bucket.data.bucket
}

output "topic_arn" {
  description = "The SNS topic S3 events go to (TSWATCH_SNS_TOPIC_ARN)"
  value       = aws_sns_topic.events.arn
}

output "role_arn" {
  description = "The instance role"
  value       = aws_iam_role.instance.arn
}

output "instance_profile_arn" {
  description = "The instance profile"
  value       = aws_iam_instance_profile.instance.arn
}

output "api_url" {
  description = "The tswatch API of the instance"
  value       = var.use_sqs ? null : "http://${aws_instance.instance[0].public_dns}:${var.port}"
}

output "queue_url" {
  description = "The queue S3 events go to (TSWATCH_SQS_QUEUE_URL)"
  value       = var.use_sqs ? aws_sqs_queue.events[0].url : null
}

output "dead_letter_queue_url" {
  description = "Messages SQS gave up on"
  value       = var.use_sqs ? aws_sqs_queue.dead_letters[0].url : null
}
