//! The dashboard's page and data endpoint over real HTTP (the page itself
//! runs in Chromium in tests/browser/dashboard.py).

use crate::harness::{Service, drop_in, tswatch, wait_file, wait_for};
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn the_page_and_its_data_are_served_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::write(tmp.path().join("none.toml"), "").unwrap();
    let mut cmd = tswatch();
    cmd.arg("--config").arg(tmp.path().join("none.toml"));
    let svc = Service::start(cmd, &["--data-dir", data.to_str().unwrap()], tmp.path()).await;

    let page = svc.http.get(format!("{}/", svc.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    // Self-contained: no script, style or font from elsewhere.
    assert!(html.contains("dashboard/data"));
    for external in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "fetch(\"http",
    ] {
        assert!(!html.contains(external), "external reference: {external}");
    }

    // 3 files of 300 rows: more rows than the series keeps.
    for k in 0..3 {
        let mut s = String::from("timestamp,a,b\n");
        for i in 0..300 {
            let m = k * 300 + i;
            s.push_str(&format!(
                "{},{},{}\n",
                1_767_225_600 + 60 * m,
                (m % 17) as f64,
                (m % 5) as f64
            ));
        }
        drop_in(&data, &format!("north/f{k}.csv"), s.as_bytes());
        wait_file(&data.join(format!("processed/north/f{k}_summary.json"))).await;
    }
    drop_in(&data, "north/bad.csv", b"timestamp,a\n1,2,3\n");
    wait_file(&data.join("processed/north/bad_error.json")).await;

    // The rejection reaches the page's error list just after its record is
    // stored (it is listed only once recorded).
    let d = wait_for(
        "the rejection on the dashboard",
        Duration::from_secs(30),
        || async {
            let (st, d) = svc.get_json("/dashboard/data?stream=north").await;
            assert_eq!(st, 200, "{d}");
            (!d["errors"].as_array()?.is_empty()).then_some(d)
        },
    )
    .await;
    assert_eq!(d["stream"], "north");
    assert!(
        d["streams"]
            .as_array()
            .unwrap()
            .contains(&Value::from("north"))
    );
    assert_eq!(d["totals"]["files_processed"], 3);
    let rows = d["recent"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), tswatch::state::recent::RECENT_ROWS);
    // The newest row last: the last file's last timestamp.
    assert_eq!(
        rows.last().unwrap()["t"],
        (1_767_225_600 + 60 * 899).to_string()
    );
    assert_eq!(d["recent"]["channels"], serde_json::json!(["a", "b"]));
    let files = d["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    assert_eq!(files[2]["source_key"], "raw/north/f2.csv");
    for ch in ["a", "b"] {
        let c = &d["channels"][ch];
        assert_eq!(c["observations"], 900, "{c}");
        assert_eq!(c["mature"], true);
        assert!(c["band"]["sd"].as_f64().unwrap() > 0.0, "{c}");
    }
    let errors = d["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{d}");
    assert_eq!(errors[0]["source_key"], "raw/north/bad.csv");

    let (st, e) = svc.get_json("/dashboard/data?stream=nowhere").await;
    assert_eq!(st, 404);
    assert!(e["error"].as_str().unwrap().contains("north"), "{e}");
}
