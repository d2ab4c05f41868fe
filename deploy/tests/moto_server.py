"""moto_server, with two fixes to its IAM enforcement, for the deploy checks.

1. moto 5.2's server recomputes a request's SigV4 signature from the query
   string after decoding it, while the client signed it encoded, so every
   signed S3 listing with a prefix (`?list-type=2&prefix=raw%2F`) fails with
   SignatureDoesNotMatch once IAM enforcement is on, whoever signs it (boto3
   too). This re-encodes the query as SigV4 does before moto computes the
   signature.
2. moto authorises a multi-object delete (POST ?delete, which object_store
   uses for every delete) as s3:DeleteObject on the bucket's ARN; S3
   authorises s3:DeleteObject on each object's ARN. A role allowed to delete
   only some keys (as tswatch's is) could delete nothing. This asks moto's
   own authorisation for each key instead.

Authentication and authorisation are otherwise moto's own (test_moto_stack
checks a wrong secret is refused, and that deletes outside the grant are).

Run as: python3 moto_server.py -H 127.0.0.1 -p PORT"""

import sys
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import moto.iam.access_control as access_control
import xmltodict
from moto.s3.responses import S3Response
from moto.server import main

_create_aws_request = access_control.IAMRequestBase._create_aws_request


def _encoded(query: str) -> str:
    pairs = (p.partition("=") for p in query.split("&"))
    return "&".join(f"{quote(unquote(k), safe='-_.~')}={quote(unquote(v), safe='-_.~')}" for k, _, v in pairs)


def create_aws_request(self):
    request = _create_aws_request(self)
    parts = urlsplit(request.url)
    if parts.query:
        request.url = urlunsplit(parts._replace(query=_encoded(parts.query)))
    return request


access_control.IAMRequestBase._create_aws_request = create_aws_request

_bucket_response_post = S3Response._bucket_response_post


def bucket_response_post(self, request, bucket_name):
    self.path = self._get_path(request)
    if not self.is_delete_keys():
        return _bucket_response_post(self, request, bucket_name)
    objects = xmltodict.parse(self.body)["Delete"].get("Object", [])
    self.data["Action"] = "DeleteObject"
    for obj in objects if isinstance(objects, list) else [objects]:
        self._authenticate_and_authorize_s3_action(bucket_name=bucket_name, key_name=obj["Key"])
    return self._bucket_response_delete_keys(bucket_name)


S3Response._bucket_response_post = bucket_response_post

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
