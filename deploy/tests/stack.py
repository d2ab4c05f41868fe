"""The CloudFormation template, created as a stack in moto, with the pieces
moto's CloudFormation leaves out applied from the template's own text.

moto 5.2 creates the bucket, role, instance profile, topic, queues,
security group, launch template, instance and group of the template, but
skips the bucket's notification configuration, AWS::S3::BucketPolicy,
AWS::SNS::TopicPolicy, AWS::SNS::Subscription and AWS::SQS::QueuePolicy,
and stores the role's inline policies in a
form its own IAM enforcement cannot read (a Python repr, not JSON: every
request signed with the role's credentials fails with a 500). Each of those is read from the template,
its intrinsic functions resolved against what the stack created, and made
through the service's API. The one value replaced is the instance's public
DNS name in the HTTP subscription's endpoint: tswatch runs on this machine,
so it is 127.0.0.1."""

import json
import re
import time

import boto3
import yaml
from botocore.exceptions import ClientError

from conftest import CFN_TEMPLATE

NO_VALUE = object()


def clients(endpoint, key="testing", secret="testing", token=None):
    kw = dict(
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
    )
    return {s: boto3.client(s, **kw) for s in ("cloudformation", "s3", "sns", "sqs", "iam", "sts")}


class Stack:
    """A stack of the template in moto, and a resolver of the template's
    intrinsic functions against it."""

    def __init__(self, endpoint, name, params):
        self.template = yaml.safe_load(CFN_TEMPLATE.read_text())
        self.aws = clients(endpoint)
        self.name = name
        cf = self.aws["cloudformation"]
        cf.create_stack(
            StackName=name,
            TemplateBody=CFN_TEMPLATE.read_text(),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
            Capabilities=["CAPABILITY_IAM"],
        )
        for _ in range(300):
            s = cf.describe_stacks(StackName=name)["Stacks"][0]
            if not s["StackStatus"].endswith("_IN_PROGRESS"):
                break
            time.sleep(0.1)
        assert s["StackStatus"] == "CREATE_COMPLETE", s
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in s.get("Outputs", [])}
        self.params = {
            k: str(v.get("Default", "")) for k, v in self.template["Parameters"].items()
        } | params
        self.physical = {
            r["LogicalResourceId"]: r.get("PhysicalResourceId", "")
            for r in cf.list_stack_resources(StackName=name)["StackResourceSummaries"]
        }
        self.conditions = {c: self.condition(c) for c in self.template["Conditions"]}
        # The pieces apply_skipped made (each is made once).
        self.applied = set()

    # -- intrinsic functions ------------------------------------------------

    def condition(self, name):
        return self._cond(self.template["Conditions"][name])

    def _cond(self, node):
        (fn, arg), = node.items()
        if fn == "Fn::Equals":
            return self.resolve(arg[0]) == self.resolve(arg[1])
        if fn == "Fn::Not":
            return not self._cond(arg[0])
        if fn == "Fn::Or":
            return any(self._cond(a) for a in arg)
        if fn == "Condition":
            return self.condition(arg)
        raise NotImplementedError(fn)

    def ref(self, name):
        pseudo = {
            "AWS::Region": "us-east-1",
            "AWS::Partition": "aws",
            "AWS::AccountId": "123456789012",
            "AWS::StackName": self.name,
        }
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in pseudo:
            return pseudo[name]
        if name in self.template["Parameters"]:
            return self.params[name]
        return self.physical[name]

    def get_att(self, res, attr):
        kind = self.template["Resources"][res]["Type"]
        if (kind, attr) == ("AWS::SQS::Queue", "Arn"):
            url = self.physical[res]
            return self.aws["sqs"].get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
        if (kind, attr) == ("AWS::EC2::Instance", "PublicDnsName"):
            return "127.0.0.1"  # tswatch runs here, not on moto's instance
        if (kind, attr) == ("AWS::IAM::Role", "Arn"):
            return self.outputs["RoleArn"]
        raise NotImplementedError(f"{res}.{attr}")

    def sub(self, text, variables):
        def one(m):
            name = m.group(1)
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                return str(self.get_att(*name.split(".", 1)))
            return str(self.ref(name))

        return re.sub(r"\$\{([^!}][^}]*)\}", one, text)

    def resolve(self, node):
        if isinstance(node, list):
            return [v for v in (self.resolve(x) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Ref":
                return self.ref(arg)
            if fn == "Fn::GetAtt":
                return self.get_att(*arg)
            if fn == "Fn::Sub":
                if isinstance(arg, str):
                    return self.sub(arg, {})
                text, variables = arg
                return self.sub(text, {k: self.resolve(v) for k, v in variables.items()})
            if fn == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.conditions[cond] else no)
            if fn == "Fn::Base64":
                return self.resolve(arg)  # the text, to read
        return {k: v for k, v in ((k, self.resolve(v)) for k, v in node.items()) if v is not NO_VALUE}

    def props(self, logical):
        return self.resolve(self.template["Resources"][logical]["Properties"])

    def exists(self, logical):
        c = self.template["Resources"][logical].get("Condition")
        return c is None or self.conditions[c]

    # -- what the instance would get -------------------------------------

    def user_data(self):
        """The cloud-init document as the instance would receive it."""
        lt = self.template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
        return yaml.safe_load(self.resolve(lt["UserData"]))

    def environment(self):
        """The KEY=VALUE settings cloud-init appends to /etc/environment."""
        (f,) = [f for f in self.user_data()["write_files"] if f["path"] == "/etc/environment"]
        env = {}
        for line in f["content"].splitlines():
            if line.strip():
                k, v = line.split("=", 1)
                env[k] = v.strip('"')
        return env

    # -- the pieces moto's CloudFormation skips ----------------------------

    def notification_missing(self):
        got = self.aws["s3"].get_bucket_notification_configuration(Bucket=self.outputs["BucketName"])
        return not got.get("TopicConfigurations")

    def apply_notification(self):
        cfg = self.props("DataBucket")["NotificationConfiguration"]
        topics = [
            {
                "TopicArn": t["Topic"],
                "Events": [t["Event"]],
                "Filter": {"Key": {"FilterRules": t["Filter"]["S3Key"]["Rules"]}},
            }
            for t in cfg["TopicConfigurations"]
        ]
        self.aws["s3"].put_bucket_notification_configuration(
            Bucket=self.outputs["BucketName"],
            NotificationConfiguration={"TopicConfigurations": topics},
        )

    def bucket_policy_missing(self):
        try:
            self.aws["s3"].get_bucket_policy(Bucket=self.outputs["BucketName"])
            return False
        except ClientError as e:
            assert e.response["Error"]["Code"] == "NoSuchBucketPolicy", e
            return True

    def apply_bucket_policy(self):
        p = self.props("DataBucketPolicy")
        self.aws["s3"].put_bucket_policy(Bucket=p["Bucket"], Policy=json.dumps(p["PolicyDocument"]))

    def lift_bucket_policy(self):
        """Checks the TLS-only bucket policy refuses a plain-HTTP request,
        then removes it. moto serves plain HTTP only, and evaluates bucket
        policies without their conditions (it knows StringEquals only), so
        with the policy in place it refuses every object request: right for
        plain HTTP, but tswatch could not run here."""
        bucket = self.outputs["BucketName"]
        s3 = self.aws["s3"]
        try:
            s3.get_object(Bucket=bucket, Key="state/probe")
            raise AssertionError("a plain-HTTP request passed the TLS-only bucket policy")
        except ClientError as e:
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 403, e.response
        s3.delete_bucket_policy(Bucket=bucket)

    def role_policies(self):
        """The role's inline policies in the template: name -> document."""
        role = self.template["Resources"]["InstanceRole"]["Properties"]
        out = {p["PolicyName"]: self.resolve(p["PolicyDocument"]) for p in role["Policies"]}
        for logical, r in self.template["Resources"].items():
            if r["Type"] == "AWS::IAM::Policy" and self.exists(logical):
                p = self.props(logical)
                if p["Roles"] == [self.physical["InstanceRole"]]:
                    out[p["PolicyName"]] = p["PolicyDocument"]
        return out

    def role_policies_missing(self):
        iam = self.aws["iam"]
        role = self.physical["InstanceRole"]
        for name, doc in self.role_policies().items():
            try:
                got = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
            except ClientError:
                return True
            if got != doc:
                return True
        return False

    def apply_role_policies(self):
        for name, doc in self.role_policies().items():
            self.aws["iam"].put_role_policy(
                RoleName=self.physical["InstanceRole"], PolicyName=name, PolicyDocument=json.dumps(doc)
            )

    def topic_policy_missing(self):
        p = self.props("TopicPolicy")
        (arn,) = p["Topics"]
        got = self.aws["sns"].get_topic_attributes(TopicArn=arn)["Attributes"].get("Policy")
        return got is None or json.loads(got) != p["PolicyDocument"]

    def apply_topic_policy(self):
        p = self.props("TopicPolicy")
        for arn in p["Topics"]:
            self.aws["sns"].set_topic_attributes(
                TopicArn=arn, AttributeName="Policy", AttributeValue=json.dumps(p["PolicyDocument"])
            )

    def queue_policy_missing(self):
        p = self.props("QueuePolicy")
        (url,) = p["Queues"]
        got = self.aws["sqs"].get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
        got = got.get("Attributes", {}).get("Policy")
        return got is None or json.loads(got) != p["PolicyDocument"]

    def apply_queue_policy(self):
        p = self.props("QueuePolicy")
        for url in p["Queues"]:
            self.aws["sqs"].set_queue_attributes(
                QueueUrl=url, Attributes={"Policy": json.dumps(p["PolicyDocument"])}
            )

    def subscription_missing(self, logical):
        p = self.props(logical)
        subs = self.aws["sns"].list_subscriptions_by_topic(TopicArn=p["TopicArn"])["Subscriptions"]
        return not any(s["Endpoint"] == p["Endpoint"] for s in subs)

    def apply_subscription(self, logical):
        p = self.props(logical)
        attributes = {}
        if p.get("RawMessageDelivery"):
            attributes["RawMessageDelivery"] = "true"
        if "DeliveryPolicy" in p:
            attributes["DeliveryPolicy"] = json.dumps(p["DeliveryPolicy"])
        self.aws["sns"].subscribe(
            TopicArn=p["TopicArn"],
            Protocol=p["Protocol"],
            Endpoint=p["Endpoint"],
            Attributes=attributes,
            ReturnSubscriptionArn=True,
        )

    def apply_skipped(self, subscriptions=True):
        """Makes what moto skipped; returns the names of what was made."""
        made = []
        pieces = [
            ("DataBucket.NotificationConfiguration", "DataBucket", self.notification_missing, self.apply_notification),
            ("DataBucketPolicy", "DataBucketPolicy", self.bucket_policy_missing, self.apply_bucket_policy),
            ("InstanceRole.Policies", "InstanceRole", self.role_policies_missing, self.apply_role_policies),
            ("TopicPolicy", "TopicPolicy", self.topic_policy_missing, self.apply_topic_policy),
            ("QueuePolicy", "QueuePolicy", self.queue_policy_missing, self.apply_queue_policy),
        ]
        if subscriptions:
            for s in ("NotifySubscription", "QueueSubscription"):
                pieces.append(
                    (s, s, lambda s=s: self.subscription_missing(s), lambda s=s: self.apply_subscription(s))
                )
        for name, logical, missing, apply in pieces:
            if name not in self.applied and self.exists(logical) and missing():
                apply()
                assert not missing(), f"{name} still missing after it was applied"
                made.append(name)
        self.applied |= set(made)
        return made
