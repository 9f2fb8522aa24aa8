//! The public RFC 7208 SPF test suite (pyspf's `rfc7208-tests.yml`, vendored in
//! `tests/fixtures/spf/`) through the gateway's SPF check (`mailgate::spf::check_mail_from`),
//! every DNS answer from a real NSD on loopback serving the suite's zone data. The zone files
//! come from `tests/peers/spf_zones.py` (which says how the suite's records are served);
//! names the suite says time out are zones NSD cannot load, so it answers them SERVFAIL.
//!
//! Every failing case is printed with the pass rate
//! (`cargo nextest run -p mailgate-tests --test spf_suite --no-capture`); the test fails
//! when fewer than [`MIN_PASSED`] cases pass.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mailgate::dns::{DnsError, Resolver, Settings};
use mailgate::spf::{Request, check_mail_from};
use serde_json::Value;
use support::{Nsd, json, peer};

/// Cases that must pass (result, and explanation where the suite gives one); raise it when
/// the implementation gets better, so a regression fails the test.
const MIN_PASSED: usize = 201;

/// The zone file of a name the suite says times out: no SOA, so NSD cannot load the zone
/// and answers every query in it SERVFAIL (checked below, per scenario).
const SERVFAIL_ZONE: &str = "; no SOA record: NSD fails to load this zone and answers SERVFAIL\n";

/// Bound on one whole check (the resolver bounds each lookup; this catches a check that
/// never ends).
const CHECK_LIMIT: Duration = Duration::from_secs(60);

/// `%{r}`: our host name in explanations.
const RECEIVER: &str = "receiver.test";

fn resolver(nsd: &Nsd) -> Resolver {
    Resolver::new(Settings {
        servers: vec![nsd.addr],
        timeout: Duration::from_secs(2),
        attempts: 1,
        ..Settings::default()
    })
}

fn text(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .to_string()
}

/// The suite as scenarios of zones and tests (`spf_zones.py` on the vendored YAML).
fn scenarios() -> Vec<Value> {
    let yaml = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/spf/rfc7208-tests.yml");
    let out = Command::new("python3")
        .arg(peer("spf_zones.py"))
        .arg(&yaml)
        .output()
        .expect("python3 spf_zones.py");
    assert!(
        out.status.success(),
        "spf_zones.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = json(&String::from_utf8(out.stdout).unwrap());
    all.as_array().expect("a list of scenarios").clone()
}

#[tokio::test]
async fn rfc7208_test_suite() {
    let scenarios = scenarios();
    let (mut total, mut passed) = (0, 0);
    let mut failures = Vec::new();
    let mut explanations = Vec::new();
    for scenario in &scenarios {
        let description = text(scenario, "description");
        for note in scenario["notes"].as_array().unwrap() {
            println!("note ({description}): {}", note.as_str().unwrap());
        }
        let zones: Vec<(String, String)> = scenario["zones"]
            .as_array()
            .unwrap()
            .iter()
            .map(|z| {
                let part = |i: usize| z[i].as_str().expect("zone name and text").to_string();
                (part(0), part(1))
            })
            .chain(
                scenario["servfail"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| (n.as_str().unwrap().to_string(), SERVFAIL_ZONE.to_string())),
            )
            .collect();
        let zones: Vec<(&str, &str)> = zones
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        let nsd = Nsd::start(&zones);

        // The names that must time out answer SERVFAIL (a fresh resolver: nothing cached).
        let probe = resolver(&nsd);
        for name in scenario["servfail"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            match probe.txt(name).await {
                Err(DnsError::ServerFailure(_)) => {}
                other => panic!("{description}: {name} should be SERVFAIL, got {other:?}"),
            }
        }

        let dns = resolver(&nsd);
        for case in scenario["tests"].as_array().unwrap() {
            total += 1;
            let name = text(case, "name");
            let spec = text(case, "spec");
            let helo = text(case, "helo");
            let sender = text(case, "mailfrom");
            let host = text(case, "host");
            let expected: Vec<String> = case["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect();
            let ip: IpAddr = host
                .parse()
                .unwrap_or_else(|e| panic!("{name}: host {host}: {e}"));
            let request = Request {
                ip,
                helo: &helo,
                sender: &sender,
                receiver: RECEIVER,
            };
            let (got, explanation) =
                match tokio::time::timeout(CHECK_LIMIT, check_mail_from(&dns, &request)).await {
                    Ok(out) => (
                        format!("{:?}", out.result()).to_lowercase(),
                        out.explanation().map(str::to_string),
                    ),
                    Err(_) => (format!("no result within {CHECK_LIMIT:?}"), None),
                };
            let result_ok = expected.contains(&got);
            // "DEFAULT" is the receiver's own default: the domain gave no explanation.
            let explanation_ok = match case["explanation"].as_str() {
                Some(want) if got == "fail" => {
                    let want = (want != "DEFAULT").then_some(want);
                    let ok = explanation.as_deref() == want;
                    if !ok {
                        explanations.push(format!(
                            "{description} / {name} ({spec}): explanation expected {want:?}, \
                             got {explanation:?}"
                        ));
                    }
                    ok
                }
                _ => true,
            };
            if result_ok && explanation_ok {
                passed += 1;
            } else if !result_ok {
                failures.push(format!(
                    "{description} / {name} ({spec}): expected {}, got {got}",
                    expected.join(" or ")
                ));
            }
        }
        drop(nsd);
    }
    println!("\n{} result mismatches:", failures.len());
    for f in &failures {
        println!("  {f}");
    }
    println!(
        "{} explanation mismatches (result fail as expected):",
        explanations.len()
    );
    for e in &explanations {
        println!("  {e}");
    }
    println!(
        "RFC 7208 suite: {passed}/{total} passed ({:.1}%)",
        100.0 * passed as f64 / total.max(1) as f64
    );
    assert!(
        total >= 200,
        "the suite has 203 cases; only {total} were read"
    );
    assert!(
        passed >= MIN_PASSED,
        "{passed}/{total} passed, fewer than the {MIN_PASSED} that passed before"
    );
}
