//! `check_host()` over an in-memory zone: the limits and the cases mail-auth 0.13 gets
//! wrong. (The RFC 7208 suite runs against a real DNS server in tests/tests/spf_suite.rs.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use mail_auth::SpfResult;

use super::{Answer, Lookup, Request, check_helo, check_mail_from};

#[derive(Default)]
struct Zone {
    txt: HashMap<String, Vec<String>>,
    a: HashMap<String, Vec<IpAddr>>,
    aaaa: HashMap<String, Vec<IpAddr>>,
    mx: HashMap<String, Vec<String>>,
    failing: Vec<String>,
    asked: Mutex<Vec<String>>,
}

impl Zone {
    fn txt(mut self, name: &str, record: &str) -> Zone {
        self.txt.entry(name.into()).or_default().push(record.into());
        self
    }
    fn a(mut self, name: &str, ip: &str) -> Zone {
        let ip: IpAddr = ip.parse().unwrap();
        let map = if ip.is_ipv6() {
            &mut self.aaaa
        } else {
            &mut self.a
        };
        map.entry(name.into()).or_default().push(ip);
        self
    }
    fn mx(mut self, name: &str, host: &str) -> Zone {
        self.mx.entry(name.into()).or_default().push(host.into());
        self
    }
    fn failing(mut self, name: &str) -> Zone {
        self.failing.push(name.into());
        self
    }
    fn get<T: Clone>(&self, map: &HashMap<String, Vec<T>>, name: &str) -> Answer<T> {
        self.asked.lock().unwrap().push(name.to_string());
        if self.failing.iter().any(|f| f == name) {
            return Answer::Failed;
        }
        match map.get(name) {
            Some(v) if !v.is_empty() => Answer::Records(v.clone()),
            _ => Answer::Void,
        }
    }
}

impl Lookup for Zone {
    async fn txt(&self, name: &str) -> Answer<String> {
        self.get(&self.txt, name)
    }
    async fn addrs(&self, name: &str, v6: bool) -> Answer<IpAddr> {
        self.get(if v6 { &self.aaaa } else { &self.a }, name)
    }
    async fn mx(&self, name: &str) -> Answer<String> {
        self.get(&self.mx, name)
    }
    async fn ptr(&self, _ip: IpAddr) -> Answer<String> {
        Answer::Void
    }
}

fn check(zone: &Zone, ip: &str, sender: &str) -> (SpfResult, Option<String>) {
    let req = Request {
        ip: ip.parse().unwrap(),
        helo: "helo.test",
        sender,
        receiver: "mx.receiver.test",
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let out = rt.block_on(check_mail_from(zone, &req));
    (out.result(), out.explanation().map(str::to_string))
}

#[test]
fn the_basic_results() {
    let zone = Zone::default()
        .txt("a.test", "v=spf1 ip4:192.0.2.0/24 a:h.a.test -all")
        .a("h.a.test", "198.51.100.7");
    assert_eq!(check(&zone, "192.0.2.9", "x@a.test").0, SpfResult::Pass);
    assert_eq!(check(&zone, "198.51.100.7", "x@a.test").0, SpfResult::Pass);
    assert_eq!(check(&zone, "203.0.113.1", "x@a.test").0, SpfResult::Fail);
    assert_eq!(
        check(&zone, "203.0.113.1", "x@none.test").0,
        SpfResult::None
    );
    // An IPv4-mapped IPv6 client is an IPv4 client.
    assert_eq!(
        check(&zone, "::ffff:192.0.2.9", "x@a.test").0,
        SpfResult::Pass
    );
}

#[test]
fn more_than_two_void_lookups_are_a_permerror() {
    let two = Zone::default().txt("v.test", "v=spf1 a:n1.v.test a:n2.v.test -all");
    assert_eq!(check(&two, "192.0.2.1", "x@v.test").0, SpfResult::Fail);
    let three = Zone::default().txt(
        "v.test",
        "v=spf1 a:n1.v.test mx:n2.v.test exists:n3.v.test -all",
    );
    assert_eq!(
        check(&three, "192.0.2.1", "x@v.test").0,
        SpfResult::PermError
    );
}

#[test]
fn exists_matches_a_records_only() {
    let zone = Zone::default()
        .txt("e.test", "v=spf1 exists:%{i}.e.test -all")
        .a("2001:db8::1.e.test", "2001:db8::1");
    // Only an AAAA record at the name: no match, even for an IPv6 client.
    assert_eq!(check(&zone, "2001:db8::1", "x@e.test").0, SpfResult::Fail);
    let zone = Zone::default()
        .txt("e.test", "v=spf1 exists:%{ir}.x.e.test -all")
        .a(
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.x.e.test",
            "127.0.0.2",
        );
    assert_eq!(check(&zone, "2001:db8::1", "x@e.test").0, SpfResult::Pass);
}

#[test]
fn included_records_are_checked_too() {
    let zone = Zone::default()
        .txt("i.test", "v=spf1 include:inc.i.test -all")
        .txt("inc.i.test", "v=spf1 frobnicate:x ip4:192.0.2.0/24 -all");
    assert_eq!(
        check(&zone, "192.0.2.1", "x@i.test").0,
        SpfResult::PermError
    );
    // An included domain without a record is an error, not "no match".
    let zone = Zone::default().txt("i.test", "v=spf1 include:nothing.i.test -all");
    assert_eq!(
        check(&zone, "192.0.2.1", "x@i.test").0,
        SpfResult::PermError
    );
    // A fail inside an include is "no match" for the includer.
    let zone = Zone::default()
        .txt("i.test", "v=spf1 include:inc.i.test ?all")
        .txt("inc.i.test", "v=spf1 -all");
    assert_eq!(check(&zone, "192.0.2.1", "x@i.test").0, SpfResult::Neutral);
}

#[test]
fn the_ten_term_limit_counts_recursion() {
    let mut zone = Zone::default();
    for i in 0..11 {
        zone = zone.txt(
            &format!("l{i}.test"),
            &format!("v=spf1 include:l{}.test -all", i + 1),
        );
    }
    zone = zone.txt("l11.test", "v=spf1 +all");
    assert_eq!(
        check(&zone, "192.0.2.1", "x@l0.test").0,
        SpfResult::PermError
    );
    assert_eq!(check(&zone, "192.0.2.1", "x@l1.test").0, SpfResult::Pass);
}

#[test]
fn more_than_ten_mx_records_are_a_permerror() {
    let mut zone = Zone::default().txt("m.test", "v=spf1 mx -all");
    for i in 0..11 {
        zone = zone.mx("m.test", &format!("mx{i}.m.test"));
    }
    assert_eq!(
        check(&zone, "192.0.2.1", "x@m.test").0,
        SpfResult::PermError
    );
}

#[test]
fn dns_failures_are_temperrors_and_redirect_to_nothing_is_a_permerror() {
    let zone = Zone::default()
        .txt("t.test", "v=spf1 a:down.t.test -all")
        .failing("down.t.test")
        .failing("down2.test")
        .txt("r.test", "v=spf1 redirect=nothing.test");
    assert_eq!(
        check(&zone, "192.0.2.1", "x@t.test").0,
        SpfResult::TempError
    );
    assert_eq!(
        check(&zone, "192.0.2.1", "x@down2.test").0,
        SpfResult::TempError
    );
    assert_eq!(
        check(&zone, "192.0.2.1", "x@r.test").0,
        SpfResult::PermError
    );
}

#[test]
fn explanations_come_from_exp_and_not_from_inside_an_include() {
    let zone = Zone::default()
        .txt("x.test", "v=spf1 -all exp=why.x.test")
        .txt("why.x.test", "%{i} may not send for %{d} (asked %{r})")
        .txt("y.test", "v=spf1 include:x.test -all");
    let (r, e) = check(&zone, "192.0.2.1", "who@x.test");
    assert_eq!(r, SpfResult::Fail);
    assert_eq!(
        e.as_deref(),
        Some("192.0.2.1 may not send for x.test (asked mx.receiver.test)")
    );
    assert_eq!(
        check(&zone, "192.0.2.1", "who@y.test"),
        (SpfResult::Fail, None)
    );
}

#[test]
fn senders_without_a_local_part_and_the_null_sender() {
    let zone = Zone::default()
        .txt("l.test", "v=spf1 exists:%{l}.l.test -all")
        .a("postmaster.l.test", "127.0.0.2")
        .txt("helo.test", "v=spf1 ip4:192.0.2.1 -all");
    assert_eq!(check(&zone, "192.0.2.1", "@l.test").0, SpfResult::Pass);
    assert_eq!(check(&zone, "192.0.2.1", "").0, SpfResult::Pass);
    assert_eq!(check(&zone, "192.0.2.2", "").0, SpfResult::Fail);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let req = Request {
        ip: "192.0.2.1".parse().unwrap(),
        helo: "nodots",
        sender: "",
        receiver: "r.test",
    };
    assert_eq!(
        rt.block_on(check_helo(&zone, &req)).result(),
        SpfResult::None
    );
}
