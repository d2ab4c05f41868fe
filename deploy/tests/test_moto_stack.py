"""The CloudFormation stack, created in moto, runs tswatch end to end, with
moto's IAM enforcement on and tswatch holding credentials of the role the
stack created: an object uploaded to raw/ travels the template's wiring
(bucket notification -> topic -> HTTP subscription to /notify, or -> queue)
to processed/, and what the role was not granted is refused."""

import json
import os
import urllib.request

import pytest
from botocore.exceptions import ClientError

from conftest import FIXTURE, UNIT, Proc, free_port, wait_for
from stack import Stack, clients

# What moto 5.2's CloudFormation leaves out or stores unusably (measured),
# in both modes; the tests fail if this changes, so the list (and
# docs/deploy.md) stay true.
SKIPPED = {
    "DataBucket.NotificationConfiguration",
    "DataBucketPolicy",
    "InstanceRole.Policies",
    "TopicPolicy",
}
BAD_CSV = b"timestamp,a\n1,2\n2,3,4\n"


def enforce_iam(moto, stack):
    """Makes an administrator for the test's own calls, takes credentials of
    the stack's instance role, then turns moto's IAM enforcement on (from
    the next request, every request is authenticated and authorised).
    Returns (administrator's clients, the role's credentials)."""
    iam = stack.aws["iam"]
    iam.create_user(UserName="admin")
    iam.put_user_policy(
        UserName="admin",
        PolicyName="all",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    k = iam.create_access_key(UserName="admin")["AccessKey"]
    role = stack.aws["sts"].assume_role(RoleArn=stack.outputs["RoleArn"], RoleSessionName="tswatch")[
        "Credentials"
    ]
    req = urllib.request.Request(
        f"{moto}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(req, timeout=10)
    admin = clients(moto, k["AccessKeyId"], k["SecretAccessKey"])
    stack.aws = admin
    return admin, role


def exec_start_args():
    """The arguments the unit starts tswatch with."""
    (line,) = [l for l in UNIT.read_text().splitlines() if l.startswith("ExecStart=")]
    return line.split("=", 1)[1].split()[1:]


def start_tswatch(tswatch_bin, moto, stack, role, tmp_path, extra=()):
    """tswatch as the instance runs it: the unit's command line, the
    settings cloud-init writes to /etc/environment (bound to loopback
    instead of 0.0.0.0, and the queue at moto's address), the role's credentials (as the instance profile
    would give them), and moto for AWS."""
    env_file = stack.environment()
    port = stack.params["Port"]
    assert env_file.pop("TSWATCH_BIND") == f"0.0.0.0:{port}"
    if "TSWATCH_SQS_QUEUE_URL" in env_file:
        # moto names the queue by its AWS URL; it answers for it at its own.
        aws = "https://sqs.us-east-1.amazonaws.com/"
        assert env_file["TSWATCH_SQS_QUEUE_URL"].startswith(aws)
        env_file["TSWATCH_SQS_QUEUE_URL"] = env_file["TSWATCH_SQS_QUEUE_URL"].replace(aws, f"{moto}/")
    env = {
        "PATH": os.environ["PATH"],
        "TSWATCH_BIND": f"127.0.0.1:{port}",
        "AWS_ENDPOINT_URL": moto,
        "AWS_ACCESS_KEY_ID": role["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": role["SecretAccessKey"],
        "AWS_SESSION_TOKEN": role["SessionToken"],
        "AWS_EC2_METADATA_DISABLED": "true",
        "TSWATCH_LOG": "info,tswatch=debug",
        **env_file,
    }
    proc = Proc([str(tswatch_bin), *exec_start_args(), *extra], tmp_path / "tswatch.log", env=env)
    base = f"http://127.0.0.1:{port}"

    def healthy():
        if proc.p.poll() is not None:
            pytest.fail(f"tswatch exited:\n{proc.text()}")
        try:
            return urllib.request.urlopen(f"{base}/health", timeout=1).status == 200
        except OSError:
            return False

    wait_for("tswatch /health", 60, healthy)
    return proc


def wait_object(s3, bucket, key, timeout=60):
    def get():
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError:
            return None

    return wait_for(f"s3://{bucket}/{key}", timeout, get, interval=0.2)


def assert_denied(call, **kw):
    with pytest.raises(ClientError) as e:
        call(**kw)
    err = e.value.response["Error"]
    # moto answers SQS's JSON protocol with a query-protocol XML error, which
    # boto3 reports as code "403" with the XML as the message.
    assert err["Code"] == "AccessDenied" or (
        err["Code"] == "403" and "<Code>AccessDenied</Code>" in err["Message"]
    ), e.value.response


def run_through(stack, admin, role, moto, proc):
    """Uploads into raw/ and checks what reaches processed/; then checks
    the role's limits. Returns nothing; fails on the first difference."""
    s3 = admin["s3"]
    bucket = stack.outputs["BucketName"]
    fixture = FIXTURE.read_bytes()
    # A broken batch gets an error record; its corrected upload replaces it
    # (tswatch deletes the record: the one delete it may make in processed/).
    s3.put_object(Bucket=bucket, Key="raw/site1/batch.csv", Body=BAD_CSV)
    err = json.loads(wait_object(s3, bucket, "processed/site1/batch_error.json"))
    assert err["line"] == 3, err
    s3.put_object(Bucket=bucket, Key="raw/site1/batch.csv", Body=fixture)
    s3.put_object(Bucket=bucket, Key="raw/sensors.csv", Body=fixture)
    for name in ("site1/batch", "sensors"):
        summary = json.loads(wait_object(s3, bucket, f"processed/{name}_summary.json"))
        assert summary["total_rows"] == 100, summary
        scored = s3.get_object(Bucket=bucket, Key=f"processed/{name}.csv")["Body"].read()
        assert scored.count(b"\n") == 101
    wait_for(
        "the error record to be removed",
        30,
        lambda: "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="processed/site1/batch_error"),
    )
    assert s3.get_object(Bucket=bucket, Key="state/baseline.json")
    log = proc.text()
    for word in ("AccessDenied", "403 Forbidden", "rejected SNS message"):
        assert word not in log, log

    # The role's limits, with the credentials tswatch ran on.
    r = clients(moto, role["AccessKeyId"], role["SecretAccessKey"], role["SessionToken"])["s3"]
    assert r.get_object(Bucket=bucket, Key="raw/sensors.csv")["Body"].read() == fixture
    assert_denied(r.put_object, Bucket=bucket, Key="elsewhere/x.csv", Body=b"x")
    assert_denied(r.put_object, Bucket=bucket, Key="raw/forged.csv", Body=b"x")
    assert_denied(r.delete_object, Bucket=bucket, Key="raw/sensors.csv")
    assert_denied(r.delete_object, Bucket=bucket, Key="processed/sensors.csv")
    assert_denied(r.delete_object, Bucket=bucket, Key="state/baseline.json")
    assert_denied(r.get_object, Bucket=bucket, Key="elsewhere/x.csv")
    # Signatures are still checked, listings included (moto_server.py).
    forged = clients(moto, role["AccessKeyId"], "not-the-secret", role["SessionToken"])["s3"]
    with pytest.raises(ClientError) as e:
        forged.list_objects_v2(Bucket=bucket, Prefix="raw/")
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch", e.value.response
    assert r.list_objects_v2(Bucket=bucket, Prefix="raw/")["KeyCount"] == 2
    assert s3.get_object(Bucket=bucket, Key="raw/sensors.csv")


def test_http_mode_stack_carries_an_upload_to_processed(moto, tmp_path, tswatch_bin):
    port = free_port()
    stack = Stack(
        moto,
        "tswatch-http",
        {"BucketName": "tswatch-deploy-http", "ReleaseUrl": "https://example.invalid/tswatch", "Port": str(port)},
    )
    made = stack.apply_skipped(subscriptions=False)
    stack.lift_bucket_policy()
    admin, role = enforce_iam(moto, stack)
    env = stack.environment()
    assert env["BUCKET_NAME"] == stack.outputs["BucketName"]
    assert env["TSWATCH_SNS_TOPIC_ARN"] == stack.outputs["TopicArn"]
    assert "TSWATCH_SQS_QUEUE_URL" not in env
    # Signatures are checked: moto signs its deliveries, and its certificate
    # is fetched from moto (the one flag the instance does not have).
    # Reconciliation (which would find the files without any event) waits
    # an hour: what reaches processed/ came through the wiring.
    proc = start_tswatch(
        tswatch_bin, moto, stack, role, tmp_path, ["--sns-cert-endpoint", moto, "--reconcile-interval", "3600"]
    )
    try:
        made += stack.apply_skipped()
        assert set(made) == SKIPPED | {"NotifySubscription"}, made
        run_through(stack, admin, role, moto, proc)
    finally:
        proc.stop()


def test_sqs_mode_stack_carries_an_upload_to_processed(moto, tmp_path, tswatch_bin):
    stack = Stack(
        moto,
        "tswatch-sqs",
        {
            "BucketName": "tswatch-deploy-sqs",
            "ReleaseUrl": "https://example.invalid/tswatch",
            "Port": str(free_port()),
            "UseSqs": "true",
        },
    )
    made = stack.apply_skipped()
    assert set(made) == SKIPPED | {"QueuePolicy", "QueueSubscription"}, made
    stack.lift_bucket_policy()
    admin, role = enforce_iam(moto, stack)
    env = stack.environment()
    assert env["BUCKET_NAME"] == stack.outputs["BucketName"]
    assert env["TSWATCH_SQS_QUEUE_URL"] == stack.outputs["QueueUrl"]
    # A scored file larger than this is moved by a multipart copy through
    # tswatch (and an upload it abandons is aborted): the other write path.
    proc = start_tswatch(
        tswatch_bin, moto, stack, role, tmp_path, ["--s3-max-copy-bytes", "1", "--reconcile-interval", "3600"]
    )
    try:
        run_through(stack, admin, role, moto, proc)
        # Every message was deleted once its file was done; none went to the
        # dead-letter queue.
        sqs = admin["sqs"]

        def depth(url):
            a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])

        wait_for("the queue to drain", 30, lambda: depth(stack.outputs["QueueUrl"]) == 0)
        assert depth(stack.outputs["DeadLetterQueueUrl"]) == 0
        r = clients(moto, role["AccessKeyId"], role["SecretAccessKey"], role["SessionToken"])["sqs"]
        assert_denied(r.send_message, QueueUrl=stack.outputs["QueueUrl"], MessageBody="x")
        assert_denied(r.purge_queue, QueueUrl=stack.outputs["QueueUrl"])
    finally:
        proc.stop()
