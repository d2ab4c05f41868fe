//! SNS-style signing for tests: RSA key pairs and self-signed X.509
//! certificates generated for this test run, and SignatureVersion 1
//! (SHA1withRSA) and 2 (SHA256withRSA) signatures over canonical strings.
//!
//! The work is done by Python `cryptography` (installed with moto, which the
//! integration tests need anyway): aws-lc-rs, the verifier's library, does
//! not sign with SHA1, and this keeps the build free of an RSA crate. One
//! Python process serves the whole test binary over a line protocol; it
//! exits when its stdin closes, i.e. when the test binary exits.

use base64::Engine as _;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use tswatch::ingest::sns::SnsMessage;

const SCRIPT: &str = r#"
import base64, datetime, json, sys
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

keys = {}
def key(n):
    if n not in keys:
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(k.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .sign(k, hashes.SHA256()))
        keys[n] = (k, cert.public_bytes(serialization.Encoding.PEM).decode())
    return keys[n]

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    k, pem = key(req["key"])
    if req["op"] == "cert":
        print(json.dumps({"pem": pem}), flush=True)
    else:
        h = hashes.SHA1() if req["v"] == "1" else hashes.SHA256()
        sig = k.sign(req["text"].encode(), padding.PKCS1v15(), h)
        print(json.dumps({"sig": base64.b64encode(sig).decode()}), flush=True)
"#;

struct Py {
    /// Kept for the life of the test binary; exits when stdin closes.
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Py {
    fn call(&mut self, req: Value) -> Value {
        writeln!(self.stdin, "{req}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("signer said {line:?}: {e}"))
    }
}

fn py() -> &'static Mutex<Py> {
    static PY: OnceLock<Mutex<Py>> = OnceLock::new();
    PY.get_or_init(|| {
        let python = std::env::var("TSWATCH_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} ({e}): the SNS tests need Python with `cryptography` (installed with moto)"));
        let mut py = Py {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            _child: child,
        };
        let mut line = String::new();
        py.stdout.read_line(&mut line).unwrap();
        assert!(
            line.contains("ready"),
            "{python} could not start the signer (is `cryptography` installed? set TSWATCH_TEST_PYTHON)"
        );
        Mutex::new(py)
    })
}

/// The PEM certificate of test key `key` (0, 1, ...: each a fresh 2048-bit RSA key).
pub(crate) fn cert_pem(key: u32) -> Vec<u8> {
    let r = py().lock().unwrap().call(json!({"op": "cert", "key": key}));
    r["pem"].as_str().unwrap().as_bytes().to_vec()
}

/// Base64 PKCS#1 v1.5 signature of `text` with key `key`: SHA1 for
/// version "1", SHA256 otherwise.
pub(crate) fn sign_text(key: u32, version: &str, text: &str) -> String {
    let r = py()
        .lock()
        .unwrap()
        .call(json!({"op": "sign", "key": key, "v": version, "text": text}));
    r["sig"].as_str().unwrap().to_string()
}

/// Where test messages say their certificate is.
pub(crate) const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem";
/// The topic test messages come from.
pub(crate) const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:tswatch";

/// What SNS signs, written here from AWS's documentation ("Verifying the
/// signature of an Amazon SNS message", docs.aws.amazon.com/sns/latest/dg/
/// sns-verify-signature-of-message-verify-message-signature.html), never
/// from the code under test: each field as `Name\nvalue\n`, in this
/// order. A Notification signs Message, MessageId, Subject (only if
/// present), Timestamp, TopicArn and Type; a SubscriptionConfirmation or
/// UnsubscribeConfirmation signs Message, MessageId, SubscribeURL,
/// Timestamp, Token, TopicArn and Type. `None` for any other Type, or a
/// confirmation without its SubscribeURL or Token.
pub(crate) fn aws_string_to_sign(m: &SnsMessage) -> Option<String> {
    let fields: Vec<(&str, Option<&str>)> = match m.kind.as_str() {
        "Notification" => vec![
            ("Message", Some(&m.message)),
            ("MessageId", Some(&m.message_id)),
            ("Subject", m.subject.as_deref()),
            ("Timestamp", Some(&m.timestamp)),
            ("TopicArn", Some(&m.topic_arn)),
            ("Type", Some(&m.kind)),
        ],
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => vec![
            ("Message", Some(&m.message)),
            ("MessageId", Some(&m.message_id)),
            ("SubscribeURL", Some(m.subscribe_url.as_deref()?)),
            ("Timestamp", Some(&m.timestamp)),
            ("Token", Some(m.token.as_deref()?)),
            ("TopicArn", Some(&m.topic_arn)),
            ("Type", Some(&m.kind)),
        ],
        _ => return None,
    };
    let mut s = String::new();
    for (name, value) in fields {
        if let Some(v) = value {
            s.push_str(&format!("{name}\n{v}\n"));
        }
    }
    Some(s)
}

/// Signs `msg` as SNS would with key `key`, as `version`, over
/// [`aws_string_to_sign`].
pub(crate) fn sign(msg: &mut SnsMessage, key: u32, version: &str) {
    msg.signature_version = version.to_string();
    let text = aws_string_to_sign(msg).unwrap();
    msg.signature = sign_text(key, version, &text);
}

/// The current time as SNS writes timestamps.
pub(crate) fn sns_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// An unsigned Notification carrying `message`.
pub(crate) fn notification(message: &str, subject: Option<&str>) -> SnsMessage {
    SnsMessage {
        kind: "Notification".into(),
        message_id: "c8a1f0de-7c3b-5c2a-9f1e-0123456789ab".into(),
        topic_arn: TOPIC.into(),
        message: message.into(),
        timestamp: sns_now(),
        signature_version: "2".into(),
        signature: String::new(),
        signing_cert_url: CERT_URL.into(),
        subscribe_url: None,
        token: None,
        subject: subject.map(str::to_string),
    }
}

/// An unsigned SubscriptionConfirmation (or UnsubscribeConfirmation).
pub(crate) fn confirmation(kind: &str) -> SnsMessage {
    SnsMessage {
        kind: kind.into(),
        message: "You have chosen to subscribe to the topic.".into(),
        subscribe_url: Some(
            "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-east-1:123456789012:tswatch&Token=2336412f37"
                .into(),
        ),
        token: Some("2336412f37".into()),
        ..notification("", None)
    }
}

/// The message as SNS posts it.
pub(crate) fn to_json(m: &SnsMessage) -> Value {
    let mut v = json!({
        "Type": m.kind, "MessageId": m.message_id, "TopicArn": m.topic_arn,
        "Message": m.message, "Timestamp": m.timestamp,
        "SignatureVersion": m.signature_version, "Signature": m.signature,
        "SigningCertURL": m.signing_cert_url,
    });
    if let Some(s) = &m.subject {
        v["Subject"] = json!(s);
    }
    if let Some(u) = &m.subscribe_url {
        v["SubscribeURL"] = json!(u);
    }
    if let Some(t) = &m.token {
        v["Token"] = json!(t);
    }
    v
}

/// The signature bytes of `msg`.
pub(crate) fn signature_bytes(msg: &SnsMessage) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(&msg.signature)
        .unwrap()
}

/// Base64 of `bytes`.
pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
