#!/usr/bin/env python3
"""Validates an OpenAPI document and real HTTP exchanges against it.

usage: tests/api/validate_openapi.py < INPUT.json

INPUT is {"document": <the OpenAPI document>, "exchanges": [{"what",
"method", "path", "status", "content_type", "body"}]}, where `path` is the
documented path (no query) or null for a path the document does not have
(an unknown path: its body must match the `ErrorBody` schema), and `body`
is the response body as text. Run by crates/tswatch/tests/it/openapi.rs,
which starts the real binary and makes the exchanges.

Checks: the document is valid OpenAPI (openapi-spec-validator); every
exchange's status is documented for its operation; its content type is the
documented one; a JSON body is valid JSON Schema 2020-12 against the
documented schema, `$ref`s resolved within the document (jsonschema).
Prints one line per failure and exits 1 if there is any, else prints a
count and exits 0.
"""

import json
import sys

try:
    from jsonschema import Draft202012Validator
    from openapi_spec_validator import validate as validate_spec
except ImportError as e:  # a clear word, not a traceback
    print(f"missing Python package ({e.name}): python3 -m pip install "
          "'jsonschema>=4.18' 'openapi-spec-validator>=0.7' (./scripts/test does)", file=sys.stderr)
    sys.exit(2)


def media(ct):
    return (ct or "").split(";")[0].strip().lower()


def check(doc, ex):
    """The reasons `ex` does not conform to `doc` (empty when it does)."""
    what = f"{ex['what']}: {ex['method']} {ex['path']} -> {ex['status']}"
    if ex["path"] is None:
        schema = {"$ref": "#/components/schemas/ErrorBody"}
        if media(ex["content_type"]) != "application/json":
            return [f"{what}: content type {ex['content_type']!r}, not application/json"]
    else:
        op = doc["paths"].get(ex["path"], {}).get(ex["method"].lower())
        if op is None:
            return [f"{what}: no such operation in the document"]
        resp = op["responses"].get(str(ex["status"])) or op["responses"].get("default")
        if resp is None:
            return [f"{what}: status not documented (documented: {sorted(op['responses'])})"]
        content = resp.get("content", {})
        if not content:
            return [] if not ex["body"] else [f"{what}: a body where none is documented"]
        got = media(ex["content_type"])
        match = [c for c in content if media(c) == got]
        if not match:
            return [f"{what}: content type {ex['content_type']!r}, documented {sorted(content)}"]
        want = content[match[0]]
        if match[0] != ex["content_type"] and ";" in match[0]:
            return [f"{what}: content type {ex['content_type']!r}, documented {match[0]!r}"]
        schema = want.get("schema", {})
        if got != "application/json":
            if schema.get("type") == "string" and not isinstance(ex["body"], str):
                return [f"{what}: body is not text"]
            return []
    try:
        body = json.loads(ex["body"])
    except ValueError as e:
        return [f"{what}: body is not JSON ({e}): {ex['body'][:200]!r}"]
    # The schema with the document's components beside it, so that
    # "#/components/schemas/X" resolves within this root.
    root = dict(schema, components=doc.get("components", {}))
    validator = Draft202012Validator(root)
    return [f"{what}: {'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
            for e in validator.iter_errors(body)]


def main():
    data = json.load(sys.stdin)
    doc = data["document"]
    failures = []
    try:
        validate_spec(doc)
    except Exception as e:  # the validator's own error types vary by version
        failures.append(f"the document is not valid OpenAPI: {e}")
    for ex in data["exchanges"]:
        failures.extend(check(doc, ex))
    for f in failures:
        print(f)
    if failures:
        sys.exit(1)
    print(f"{len(data['exchanges'])} responses conform to the document")


if __name__ == "__main__":
    main()
