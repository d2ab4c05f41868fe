"""Checks of the deployment files that need no cloud: the linters, the
systemd unit, the copies of the unit and of the user data, and that the
Terraform module declares what the CloudFormation template does."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest
import yaml

from conftest import CFN_TEMPLATE, TERRAFORM, UNIT, USER_DATA

CFN = yaml.safe_load(CFN_TEMPLATE.read_text())


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, **kw)


# ------------------------------------------------------------------ linters


def test_cfn_lint_passes():
    r = run(["cfn-lint", str(CFN_TEMPLATE)])
    assert r.returncode == 0, r.stdout + r.stderr


def checkov(*args):
    exe = os.environ.get("CHECKOV", shutil.which("checkov") or "checkov")
    r = run([exe, *args, "--compact", "--skip-download", "--quiet", "--output", "json"])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["-f", str(CFN_TEMPLATE), "--framework", "cloudformation"],
        ["-d", str(TERRAFORM), "--framework", "terraform"],
    ],
    ids=["cloudformation", "terraform"],
)
def test_checkov_passes_and_every_skip_says_why(args):
    import json

    out = json.loads(checkov(*args))
    summary = out["summary"]
    assert summary["failed"] == 0, out
    assert summary["passed"] > 0, out
    for check in out["results"].get("skipped_checks", []):
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} skipped without a reason: {reason!r}"


# ----------------------------------------------------------------- systemd


def systemd_root(tmp_path: Path) -> Path:
    """A root with the unit installed, its binary present, and this
    machine's own system units (which verify resolves dependencies in)."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/tswatch.service")
    (root / "usr/local/bin").mkdir(parents=True)
    shutil.copy("/bin/true", root / "usr/local/bin/tswatch")
    (root / "etc/environment").write_text('BUCKET_NAME="b"\n')
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    return root


def test_systemd_unit_verifies(tmp_path):
    r = run(["systemd-analyze", "verify", f"--root={systemd_root(tmp_path)}", "/etc/systemd/system/tswatch.service"])
    # verify only warns about unknown or bad settings: any output is a failure.
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_systemd_unit_is_rated_ok_or_better():
    r = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)])
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"Overall exposure level for tswatch\.service: ([0-9.]+) (\w+)", r.stdout)
    assert m, r.stdout
    score, rating = float(m.group(1)), m.group(2)
    print(f"systemd-analyze security: {score} {rating}")
    assert rating in ("PERFECT", "SAFE", "OK"), r.stdout
    # Where the unit is now (1.2): a change that loosens it shows here.
    assert score <= 1.2, r.stdout


def test_unit_keeps_the_hardening_the_issue_asks_for():
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            settings.setdefault(k, []).append(v)
    want = {
        "User": ["tswatch"],
        "Restart": ["on-failure"],
        "EnvironmentFile": ["/etc/environment"],
        "ProtectSystem": ["strict"],
        "NoNewPrivileges": ["yes"],
        "PrivateTmp": ["yes"],
        "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
    }
    for k, v in want.items():
        assert settings.get(k) == v, (k, settings.get(k))
    assert settings["SystemCallFilter"][0] == "@system-service"


# ------------------------------------------------------------------- copies


def test_user_data_carries_the_unit_verbatim():
    doc = yaml.safe_load(USER_DATA.read_text())
    (unit,) = [f["content"] for f in doc["write_files"] if f["path"] == "/etc/systemd/system/tswatch.service"]
    assert unit == UNIT.read_text()


def test_cloudformation_carries_the_user_data_verbatim():
    lt = CFN["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    text, variables = lt["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert text == USER_DATA.read_text()
    # Every name the file uses is a Sub variable or a template parameter.
    names = set(re.findall(r"\$\{([^}]+)\}", text))
    assert names == set(variables) | (names & set(CFN["Parameters"])), names


def test_instance_never_skips_sns_verification_and_binds_beyond_loopback():
    text = USER_DATA.read_text() + CFN_TEMPLATE.read_text()
    text += "".join(p.read_text() for p in TERRAFORM.glob("*.tf"))
    for flag in ("insecure-skip-sns-verify", "TSWATCH_INSECURE_SKIP_SNS_VERIFY", "sns-cert-endpoint", "SNS_CERT_ENDPOINT"):
        assert flag not in text, flag
    env = [f for f in yaml.safe_load(USER_DATA.read_text())["write_files"] if f["path"] == "/etc/environment"]
    assert 'TSWATCH_BIND="0.0.0.0:${Port}"' in env[0]["content"]
    assert 'TSWATCH_SNS_TOPIC_ARN="${TopicArn}"' in env[0]["content"]


# --------------------------------------------- Terraform = CloudFormation


def unquote(v):
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    return v


def clean(node):
    """python-hcl2's tree without its quotes and block markers."""
    if isinstance(node, dict):
        return {unquote(k): clean(v) for k, v in node.items() if k != "__is_block__"}
    if isinstance(node, list):
        return [clean(x) for x in node]
    return unquote(node)


def load_terraform():
    tf = {"resource": {}, "data": {}, "variable": {}, "output": {}}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with open(path) as f:
            doc = clean(hcl2.load(f))
        for kind in tf:
            for block in doc.get(kind, []):
                if kind in ("resource", "data"):
                    for rtype, named in block.items():
                        for name, body in named.items():
                            tf[kind][f"{rtype}.{name}"] = body
                else:
                    for name, body in block.items():
                        tf[kind][name] = body
    return tf


TF = load_terraform()

# Each CloudFormation resource and what declares it in Terraform (the
# provider splits a bucket's settings, and policies are data sources).
RESOURCES = {
    "DataBucket": [
        "aws_s3_bucket.data",
        "aws_s3_bucket_versioning.data",
        "aws_s3_bucket_server_side_encryption_configuration.data",
        "aws_s3_bucket_public_access_block.data",
        "aws_s3_bucket_ownership_controls.data",
        "aws_s3_bucket_lifecycle_configuration.data",
        "aws_s3_bucket_notification.data",
    ],
    "DataBucketPolicy": ["aws_s3_bucket_policy.data", "data.aws_iam_policy_document.bucket"],
    "Topic": ["aws_sns_topic.events"],
    "TopicPolicy": ["aws_sns_topic_policy.events", "data.aws_iam_policy_document.topic"],
    "NotifySubscription": ["aws_sns_topic_subscription.notify"],
    "Queue": ["aws_sqs_queue.events"],
    "DeadLetterQueue": ["aws_sqs_queue.dead_letters"],
    "QueuePolicy": ["aws_sqs_queue_policy.events", "data.aws_iam_policy_document.queue"],
    "QueueSubscription": ["aws_sns_topic_subscription.queue"],
    "InstanceRole": ["aws_iam_role.instance", "aws_iam_role_policy.instance", "data.aws_iam_policy_document.assume", "data.aws_iam_policy_document.instance"],
    "QueueConsumerPolicy": ["aws_iam_role_policy.queue_consumer", "data.aws_iam_policy_document.queue_consumer"],
    "InstanceProfile": ["aws_iam_instance_profile.instance"],
    "InstanceSecurityGroup": ["aws_security_group.instance"],
    "LaunchTemplate": ["aws_launch_template.instance", "data.aws_ssm_parameter.image"],
    "Instance": ["aws_instance.instance"],
    "InstanceGroup": ["aws_autoscaling_group.instances", "data.aws_availability_zones.available"],
}
# CloudFormation's pseudo parameters (partition, region, account).
PSEUDO = {"data.aws_partition.current", "data.aws_region.current", "data.aws_caller_identity.current"}


def tf_block(address):
    kind = "data" if address.startswith("data.") else "resource"
    return TF[kind][address.removeprefix("data.")]


def test_terraform_declares_the_same_resources():
    assert set(RESOURCES) == set(CFN["Resources"])
    declared = {f"data.{a}" for a in TF["data"]} | set(TF["resource"])
    mapped = {a for v in RESOURCES.values() for a in v} | PSEUDO
    assert declared == mapped, (declared - mapped, mapped - declared)


def test_terraform_creates_them_in_the_same_modes():
    count = {None: None, "SqsMode": "${var.use_sqs ? 1 : 0}", "HttpMode": "${var.use_sqs ? 0 : 1}"}
    for logical, addresses in RESOURCES.items():
        want = count[CFN["Resources"][logical].get("Condition")]
        for a in addresses:
            if a.startswith("data.aws_iam_policy_document.") or a in ("data.aws_ssm_parameter.image", "data.aws_availability_zones.available"):
                # a policy document exists where its resource does
                got = tf_block(a).get("count")
                assert got in (want, None), (a, got, want)
                continue
            assert tf_block(a).get("count") == want, (a, tf_block(a).get("count"), want)


# Names both sides use for the same things, to compare policies.
CFN_SYMBOLS = {
    "arn:${AWS::Partition}:s3:::${BucketName}": "BUCKET",
}
TF_SYMBOLS = {
    "${local.bucket_arn}": "BUCKET",
    "${aws_sns_topic.events.arn}": "TOPIC",
    "${aws_sqs_queue.events[0].arn}": "QUEUE",
    "${data.aws_caller_identity.current.account_id}": "ACCOUNT",
}


def cfn_value(v):
    if isinstance(v, dict):
        (fn, arg), = v.items()
        if fn == "Fn::Sub":
            for k, sym in CFN_SYMBOLS.items():
                arg = arg.replace(k, sym)
            return arg
        if v == {"Ref": "Topic"}:
            return "TOPIC"
        if v == {"Fn::GetAtt": ["Queue", "Arn"]}:
            return "QUEUE"
        if v == {"Ref": "AWS::AccountId"}:
            return "ACCOUNT"
        raise AssertionError(f"no symbol for {v}")
    return v


def as_list(v):
    return v if isinstance(v, list) else [v]


def cfn_statements(doc):
    out = []
    for s in doc["Statement"]:
        principal = s.get("Principal")
        if principal == "*":
            principal = ("*", ("*",))
        elif principal:
            ((ptype, ids),) = principal.items()
            principal = (ptype, tuple(sorted(as_list(ids))))
        conditions = tuple(
            sorted(
                (test, var, tuple(sorted(cfn_value(x) for x in as_list(vals))))
                for test, pairs in s.get("Condition", {}).items()
                for var, vals in pairs.items()
            )
        )
        out.append(
            (
                s.get("Sid"),
                s["Effect"],
                tuple(sorted(as_list(s["Action"]))),
                tuple(sorted(cfn_value(r) for r in as_list(s.get("Resource", [])))),
                principal,
                conditions,
            )
        )
    return sorted(out, key=str)


def tf_value(v):
    for k, sym in TF_SYMBOLS.items():
        v = v.replace(k, sym)
    return v


def tf_statements(doc):
    out = []
    for s in doc.get("statement", []):
        principal = None
        for p in s.get("principals", []):
            principal = (p["type"], tuple(sorted(p["identifiers"])))
        conditions = tuple(
            sorted((c["test"], c["variable"], tuple(sorted(tf_value(x) for x in c["values"]))) for c in s.get("condition", []))
        )
        out.append(
            (
                s.get("sid"),
                s.get("effect", "Allow"),
                tuple(sorted(s["actions"])),
                tuple(sorted(tf_value(r) for r in s.get("resources", []))),
                principal,
                conditions,
            )
        )
    return sorted(out, key=str)


POLICIES = [
    (("DataBucketPolicy", "PolicyDocument"), "bucket"),
    (("TopicPolicy", "PolicyDocument"), "topic"),
    (("QueuePolicy", "PolicyDocument"), "queue"),
    (("InstanceRole", "AssumeRolePolicyDocument"), "assume"),
    (("InstanceRole", "Policies", 0, "PolicyDocument"), "instance"),
    (("QueueConsumerPolicy", "PolicyDocument"), "queue_consumer"),
]


@pytest.mark.parametrize("path,data", POLICIES, ids=[d for _, d in POLICIES])
def test_terraform_policies_match_the_template(path, data):
    node = CFN["Resources"][path[0]]["Properties"]
    for step in path[1:]:
        node = node[step]
    want = cfn_statements(node)
    got = tf_statements(TF["data"][f"aws_iam_policy_document.{data}"])
    assert got == want


def test_role_grants_only_what_tswatch_does():
    """The grant, spelled out: a change to it must change this test too
    (docs/deploy.md says where in the code each action is made)."""
    (doc,) = [p["PolicyDocument"] for p in CFN["Resources"]["InstanceRole"]["Properties"]["Policies"]]
    got = {(s["Sid"], tuple(as_list(s["Action"]))): sorted(cfn_value(r) for r in as_list(s["Resource"])) for s in doc["Statement"]}
    assert got == {
        ("ListOwnPrefixes", ("s3:ListBucket",)): ["BUCKET"],
        ("ReadBatchesOutputsAndState", ("s3:GetObject",)): ["BUCKET/processed/*", "BUCKET/raw/*", "BUCKET/state/*"],
        ("WriteOutputsAndState", ("s3:PutObject",)): ["BUCKET/processed/*", "BUCKET/state/*"],
        ("AbortOwnUploads", ("s3:AbortMultipartUpload",)): ["BUCKET/processed/*", "BUCKET/state/staging/*"],
        ("DeleteStagingAndErrorRecords", ("s3:DeleteObject",)): ["BUCKET/processed/*_error.json", "BUCKET/state/staging/*"],
    }
    (listing,) = [s for s in doc["Statement"] if s["Sid"] == "ListOwnPrefixes"]
    assert listing["Condition"] == {"StringLikeIfExists": {"s3:prefix": ["raw/*", "processed/*", "state/*"]}}
    consumer = CFN["Resources"]["QueueConsumerPolicy"]
    assert consumer["Condition"] == "SqsMode"
    (s,) = consumer["Properties"]["PolicyDocument"]["Statement"]
    assert sorted(s["Action"]) == ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:ReceiveMessage"]


def snake(name):
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def test_terraform_variables_are_the_template_parameters():
    params = CFN["Parameters"]
    assert {snake(p) for p in params} == set(TF["variable"])
    for p, spec in params.items():
        var = TF["variable"][snake(p)]
        want = spec.get("Default")
        got = var.get("default")
        if want is None:
            assert got is None, p
        elif spec["Type"] == "Number":
            assert got == int(want), (p, got, want)
        elif want in ("true", "false"):
            assert got == (want == "true"), (p, got, want)
        else:
            assert got == want, (p, got, want)
        if "AllowedPattern" in spec:
            conds = " ".join(v["condition"] for v in var.get("validation", []))
            # HCL doubles backslashes in its strings.
            assert spec["AllowedPattern"].replace("\\", "\\\\") in conds, (p, conds)


def test_terraform_outputs_are_the_template_outputs():
    outputs = CFN["Outputs"]
    assert {snake(o) for o in outputs} == set(TF["output"])
    for o, spec in outputs.items():
        assert TF["output"][snake(o)]["description"] == spec["Description"], o


def test_terraform_renders_the_same_user_data():
    lt = TF["resource"]["aws_launch_template.instance"]
    m = re.search(r'templatefile\("\$\{path\.module\}/\.\./cloud-init/user-data\.yaml", (\{.*\})\)\)\}$', lt["user_data"], re.S)
    assert m, lt["user_data"]
    # python-hcl2 writes the map on one line: {Key = value, Key = value}
    keys = set(re.findall(r"[{,]\s*(\w+) = ", m.group(1)))
    names = set(re.findall(r"\$\{([^}]+)\}", USER_DATA.read_text()))
    assert keys == names, (keys ^ names)


def test_terraform_bucket_settings_match_the_template():
    b = CFN["Resources"]["DataBucket"]["Properties"]
    r = TF["resource"]
    assert b["VersioningConfiguration"]["Status"] == r["aws_s3_bucket_versioning.data"]["versioning_configuration"][0]["status"]
    (enc,) = b["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    (rule,) = r["aws_s3_bucket_server_side_encryption_configuration.data"]["rule"]
    assert enc["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == rule["apply_server_side_encryption_by_default"][0]["sse_algorithm"]
    assert enc["BucketKeyEnabled"] == rule["bucket_key_enabled"]
    pab = r["aws_s3_bucket_public_access_block.data"]
    assert {snake(k): v for k, v in b["PublicAccessBlockConfiguration"].items()} == {
        k: v for k, v in pab.items() if k != "bucket"
    }
    assert b["OwnershipControls"]["Rules"][0]["ObjectOwnership"] == r["aws_s3_bucket_ownership_controls.data"]["rule"][0]["object_ownership"]
    rules = {x["Id"]: x for x in b["LifecycleConfiguration"]["Rules"]}
    tf_rules = {x["id"]: x for x in r["aws_s3_bucket_lifecycle_configuration.data"]["rule"]}
    assert set(rules) == set(tf_rules)
    abort = "abort-incomplete-multipart-uploads"
    assert rules[abort]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == tf_rules[abort]["abort_incomplete_multipart_upload"][0]["days_after_initiation"]
    old = "expire-noncurrent-versions"
    assert rules[old]["NoncurrentVersionExpiration"]["NoncurrentDays"] == tf_rules[old]["noncurrent_version_expiration"][0]["noncurrent_days"]
    (topic,) = b["NotificationConfiguration"]["TopicConfigurations"]
    (tf_topic,) = r["aws_s3_bucket_notification.data"]["topic"]
    filters = {x["Name"]: x["Value"] for x in topic["Filter"]["S3Key"]["Rules"]}
    assert filters == {"prefix": tf_topic["filter_prefix"], "suffix": tf_topic["filter_suffix"]} == {"prefix": "raw/", "suffix": ".csv"}
    assert [topic["Event"]] == tf_topic["events"]


def test_terraform_queues_and_subscriptions_match_the_template():
    res, r = CFN["Resources"], TF["resource"]
    q = res["Queue"]["Properties"]
    assert q["VisibilityTimeout"] == r["aws_sqs_queue.events"]["visibility_timeout_seconds"]
    assert q["SqsManagedSseEnabled"] == r["aws_sqs_queue.events"]["sqs_managed_sse_enabled"]
    assert "maxReceiveCount = var.max_receive_count" in r["aws_sqs_queue.events"]["redrive_policy"]
    assert q["RedrivePolicy"]["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    dlq = res["DeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] == r["aws_sqs_queue.dead_letters"]["message_retention_seconds"]
    http = res["NotifySubscription"]["Properties"]
    tf_http = r["aws_sns_topic_subscription.notify"]
    assert http["Protocol"] == tf_http["protocol"] == "http"
    assert tf_http["endpoint"] == "http://${aws_instance.instance[0].public_dns}:${var.port}/notify"
    assert http["Endpoint"] == {"Fn::Sub": "http://${Instance.PublicDnsName}:${Port}/notify"}
    policy = http["DeliveryPolicy"]["healthyRetryPolicy"]
    for k, v in policy.items():
        want = f'"{v}"' if isinstance(v, str) else str(v)
        assert re.search(rf"\b{k}\s*=\s*{re.escape(want)}", tf_http["delivery_policy"]), k
    sqs = res["QueueSubscription"]["Properties"]
    tf_sqs = r["aws_sns_topic_subscription.queue"]
    assert (sqs["Protocol"], sqs["RawMessageDelivery"]) == (tf_sqs["protocol"], tf_sqs["raw_message_delivery"])
    lt = res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    tf_lt = r["aws_launch_template.instance"]
    assert lt["MetadataOptions"]["HttpTokens"] == tf_lt["metadata_options"][0]["http_tokens"] == "required"
    (ebs,) = lt["BlockDeviceMappings"]
    tf_ebs = tf_lt["block_device_mappings"][0]["ebs"][0]
    assert (ebs["Ebs"]["VolumeSize"], ebs["Ebs"]["VolumeType"], ebs["Ebs"]["Encrypted"]) == (
        tf_ebs["volume_size"], tf_ebs["volume_type"], tf_ebs["encrypted"]
    )
