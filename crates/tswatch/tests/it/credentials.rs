//! AWS credentials found the way the AWS CLI finds them: shared files,
//! profiles and `credential_process`, against a real moto server; and a
//! plain message when there are none.

use crate::harness::*;
use std::path::Path;
use std::process::Command;

const BUCKET: &str = "tswatch-creds";

/// The real binary pointed at moto with a home directory of its own and
/// no credentials in the environment.
fn bare(moto: &Moto, home: &Path) -> Command {
    let mut c = tswatch();
    for v in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        c.env_remove(v);
    }
    c.env("HOME", home)
        .env("BUCKET_NAME", BUCKET)
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        // No instance role here: don't wait for one.
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

fn produce(mut c: Command) -> std::process::Output {
    c.args(["produce", "--count", "1", "--interval", "0"])
        .output()
        .unwrap()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn credentials_come_from_the_shared_files_and_profiles() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let home = tmp.path().join("home");
    // What `aws configure` writes: keys in credentials, region in config.
    write(
        &home.join(".aws/credentials"),
        "[default]\naws_access_key_id = AKIDEFAULT\naws_secret_access_key = secret\n",
    );
    write(&home.join(".aws/config"), "[default]\nregion = us-east-1\n");
    let o = produce(bare(&moto, &home));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(moto.list(BUCKET, "raw/").await.len(), 1);

    // A named profile whose credentials come from a process.
    let marker = tmp.path().join("process-ran");
    let script = tmp.path().join("creds.sh");
    write(
        &script,
        &format!(
            "#!/bin/sh\ntouch '{}'\necho '{{\"Version\": 1, \"AccessKeyId\": \"AKIWORK\", \"SecretAccessKey\": \"s\"}}'\n",
            marker.display()
        ),
    );
    write(
        &home.join(".aws/config"),
        &format!(
            "[default]\nregion = us-east-1\n\n[profile work]\nregion = us-east-1\ncredential_process = sh {}\n",
            script.display()
        ),
    );
    let mut c = bare(&moto, &home);
    c.env("AWS_PROFILE", "work");
    let o = produce(c);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        marker.exists(),
        "the profile's credential_process was not used"
    );
}

#[tokio::test]
async fn no_credentials_at_all_is_said_plainly() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let o = produce(bare(&moto, tmp.path()));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no AWS credentials"), "{err}");
    assert!(err.contains("hint: "), "{err}");
    assert!(!err.contains("169.254"), "{err}");
    assert!(moto.list(BUCKET, "raw/").await.is_empty());
}

#[tokio::test]
async fn a_missing_bucket_is_one_clear_error() {
    let moto = Moto::start().await;
    for args in [
        vec!["baseline", "show"],
        vec!["produce", "--count", "1", "--interval", "0"],
    ] {
        let mut c = tswatch();
        s3_env(&mut c, &moto, "no-such-bucket");
        let o = c.env("RUST_BACKTRACE", "1").args(&args).output().unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.matches("NoSuchBucket").count(), 1, "{args:?}: {err}");
        assert!(
            !err.contains("<?xml") && !err.contains("backtrace"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("hint: the bucket does not exist"),
            "{args:?}: {err}"
        );
    }
}
