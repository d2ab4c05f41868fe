# The same parameters as deploy/cloudformation/tswatch.yaml, in snake_case
# (deploy/tests/test_static.py compares them).

variable "bucket_name" {
  type        = string
  description = "Name of the data bucket (raw/, processed/, state/). An existing seed bucket is imported, see docs/deploy.md."
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "Not a valid S3 bucket name."
  }
}

variable "release_url" {
  type        = string
  default     = ""
  description = "HTTPS URL of a tswatch release (the Linux x86_64 binary, or a .tar.gz holding it). Empty to build from source_repo."
}

variable "release_sha256" {
  type        = string
  default     = ""
  description = "SHA-256 of the file at release_url; the download is refused if it differs."
  validation {
    condition     = can(regex("^([a-f0-9]{64})?$", var.release_sha256))
    error_message = "A SHA-256 is 64 lowercase hex digits."
  }
}

variable "source_repo" {
  type        = string
  default     = ""
  description = "Git repository to build tswatch from when release_url is empty (needs an instance with 2 GiB of memory or more)."
}

variable "source_ref" {
  type        = string
  default     = "main"
  description = "Branch or tag of source_repo to build."
}

variable "instance_type" {
  type        = string
  default     = "t3.micro"
  description = "EC2 instance type (x86_64)."
}

variable "image_id" {
  type        = string
  default     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
  description = "SSM parameter holding the AMI, by default the latest Amazon Linux 2023 (cloud-init, systemd 252)."
}

variable "port" {
  type        = number
  default     = 8000
  description = "Port of the tswatch API (and of /notify, which SNS calls)."
  validation {
    condition     = var.port >= 1024 && var.port <= 65535
    error_message = "Port must be 1024-65535."
  }
}

variable "api_cidr" {
  type        = string
  default     = "0.0.0.0/0"
  description = "Who may reach the API port. SNS deliveries come from AWS addresses, so the HTTP mode needs them; SNS messages are signature-checked."
  validation {
    condition     = can(regex("^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$", var.api_cidr))
    error_message = "An IPv4 CIDR block."
  }
}

variable "use_sqs" {
  type        = bool
  default     = false
  description = "true: S3 events reach an SQS queue (with a dead-letter queue) that instance_count instances share; false: one instance behind an SNS HTTP subscription."
}

variable "instance_count" {
  type        = number
  default     = 2
  description = "Instances in the auto-scaling group (SQS mode only)."
  validation {
    condition     = var.instance_count >= 1 && var.instance_count <= 20
    error_message = "1 to 20 instances."
  }
}

variable "max_receive_count" {
  type        = number
  default     = 10
  description = "Deliveries after which SQS moves a message to the dead-letter queue; above tswatch's --sqs-max-receives (5), so tswatch records a failure first."
  validation {
    condition     = var.max_receive_count >= 6
    error_message = "Must be above tswatch's --sqs-max-receives (5)."
  }
}
