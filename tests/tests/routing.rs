//! The shipped `routing` plugin (plugins/routing) in the real gateway, queue mode: rules
//! sending the recipients of one transaction to three real SMTP servers (two aiosmtpd, one
//! Postfix), aliases, one-to-many, catch-all, plus-addresses, domain aliases, recipients
//! refused at RCPT from the plugin's map, discard/defer/reject/quarantine actions, an
//! archive copy, and a rule change picked up by a hot reload.

mod support;

use std::time::Duration;

use support::{Gateway, Postfix, Raw, Setup, Upstream, json, shipped};

const WAIT: Duration = Duration::from_secs(60);

/// The gateway in queue mode for `domains`, with the routing plugin configured by
/// `config` (the body of its `[plugin.config]` table).
fn gateway(dir: &std::path::Path, domains: &[&str], config: &str) -> Gateway {
    Setup::default()
        .section(&routing_config(dir, domains, config))
        .start()
}

fn routing_config(dir: &std::path::Path, domains: &[&str], config: &str) -> String {
    format!(
        "[relay]\nlocal_domains = {domains:?}\n\
         [delivery]\nmode = \"queue\"\n\
         [queue]\nspool = {:?}\nretry_initial_secs = 1\nretry_max_secs = 2\n\
         [[plugin]]\nname = \"routing\"\npath = {:?}\ncapabilities = [\"log\", \"verify\"]\n\
         [plugin.config]\n{config}\n",
        dir.join("spool").display().to_string(),
        shipped("routing").display().to_string()
    )
}

/// One transaction; the replies to each RCPT and the end-of-data reply (empty when no
/// recipient was accepted).
fn send(gw: &Gateway, sender: &str, rcpts: &[&str]) -> (Vec<String>, String) {
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO client.test").starts_with("250"));
    let r = raw.cmd(&format!("MAIL FROM:<{sender}>"));
    assert!(r.starts_with("250"), "{r}");
    let replies: Vec<String> = rcpts
        .iter()
        .map(|r| raw.cmd(&format!("RCPT TO:<{r}>")))
        .collect();
    if !replies.iter().any(|r| r.starts_with("250")) {
        return (replies, String::new());
    }
    assert!(raw.cmd("DATA").starts_with("354"));
    raw.send(
        b"From: <sender@client.test>\r\nTo: <u@a.test>\r\nSubject: routing\r\n\
          Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <r@client.test>\r\n\r\nHi.\r\n",
    );
    (replies, raw.cmd("."))
}

/// The envelope recipients of everything `up` stored, sorted.
fn recipients(up: &Upstream) -> Vec<String> {
    let mut all: Vec<String> = up
        .received()
        .iter()
        .flat_map(|(_, env)| {
            json(env)["rcpt_tos"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
        })
        .collect();
    all.sort();
    all
}

#[test]
fn one_transaction_to_three_next_hops() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Upstream::start(&[]);
    let mut b = Upstream::start(&[]);
    let pf = Postfix::start(&["carol@c.test"]);
    let gw = gateway(
        dir.path(),
        &["a.test", "b.test", "c.test"],
        &format!(
            "rules = [\n\
             {{ domain = \"a.test\", action = \"relay\", host = \"{}\", tls = \"disabled\" }},\n\
             {{ domain = \"b.test\", action = \"relay\", host = \"{}\", tls = \"disabled\" }},\n\
             {{ domain = \"c.test\", action = \"relay\", host = \"{}\", tls = \"disabled\" }},\n]",
            a.addr(),
            b.addr(),
            pf.addr
        ),
    );
    let (replies, end) = send(
        &gw,
        "sender@client.test",
        &["u@a.test", "v@b.test", "carol@c.test"],
    );
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    assert!(end.starts_with("250"), "{end}");
    assert!(a.wait_stored(1, WAIT), "{}", gw.log());
    assert!(b.wait_stored(1, WAIT), "{}", gw.log());
    assert!(
        pf.wait_log_count("status=sent", 1, WAIT) || !pf.mailbox("c.test", "carol").is_empty(),
        "{}",
        pf.maillog()
    );
    assert_eq!(recipients(&a), ["u@a.test"]);
    assert_eq!(recipients(&b), ["v@b.test"]);
    assert_eq!(pf.mailbox("c.test", "carol").len(), 1, "{}", pf.maillog());
}

/// Aliases (one-to-one, one-to-many), a domain alias, plus-addresses looked up without
/// their tag, a catch-all, and an unknown recipient refused at RCPT from the map.
#[test]
fn aliases_catch_all_plus_addresses_and_unknown_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Upstream::start(&[]);
    let gw = gateway(
        dir.path(),
        &["a.test", "b.test", "old.test"],
        &format!(
            "rules = [{{ domain = \"*\", action = \"relay\", host = \"{}\", tls = \"disabled\" }}]\n\
             recipients.\"a.test\" = [\"anne\", \"bob\", \"carl\"]\n\
             recipients.\"b.test\" = [\"catchall\"]\n\
             aliases.\"sales@a.test\" = [\"anne@a.test\", \"bob@a.test\"]\n\
             aliases.\"info@a.test\" = \"carl@a.test\"\n\
             domain_aliases.\"old.test\" = \"a.test\"\n\
             catch_all.\"b.test\" = \"catchall@b.test\"\n",
            up.addr()
        ),
    );
    let (replies, end) = send(
        &gw,
        "s@client.test",
        &[
            "sales@a.test",
            "info@a.test",
            "anne+news@a.test",
            "bob@old.test",
            "whoever@b.test",
            "nobody@a.test",
        ],
    );
    for r in &replies[..5] {
        assert!(r.starts_with("250"), "{replies:?}");
    }
    assert!(
        replies[5]
            .starts_with("550 5.1.1 <nobody@a.test>: Recipient address rejected: User unknown"),
        "{}",
        replies[5]
    );
    assert!(end.starts_with("250"), "{end}");
    assert!(up.wait_stored(1, WAIT), "{}", gw.log());
    assert_eq!(
        recipients(&up),
        [
            "anne+news@a.test",
            "anne@a.test",
            // Once, though sales@ and bob@old.test both lead there: the gateway delivers a
            // mailbox once per message.
            "bob@a.test",
            "carl@a.test",
            "catchall@b.test"
        ]
    );
}

/// The non-route actions: reject and defer at RCPT with the configured replies, discard
/// (accepted, not delivered), quarantine (the message is kept aside), and an archive copy.
#[test]
fn reject_defer_discard_quarantine_and_archive() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Upstream::start(&[]);
    let gw = gateway(
        dir.path(),
        &["a.test"],
        &format!(
            "archive = \"archive@a.test\"\n\
             rules = [\n\
             {{ recipient = \"gone-*@a.test\", action = \"reject\", reply = \"550 5.1.6 This address has moved\" }},\n\
             {{ recipient = \"later@a.test\", action = \"defer\" }},\n\
             {{ recipient = \"devnull@a.test\", action = \"discard\" }},\n\
             {{ recipient = \"suspect@a.test\", action = \"quarantine\" }},\n\
             {{ domain = \"a.test\", action = \"relay\", host = \"{}\", tls = \"disabled\" }},\n]",
            up.addr()
        ),
    );
    let (replies, end) = send(
        &gw,
        "s@client.test",
        &[
            "gone-bob@a.test",
            "later@a.test",
            "devnull@a.test",
            "u@a.test",
        ],
    );
    assert!(
        replies[0].starts_with("550 5.1.6 This address has moved"),
        "{replies:?}"
    );
    assert!(
        replies[1].starts_with("451 4.3.0 Try again later"),
        "{replies:?}"
    );
    assert!(
        replies[2].starts_with("250") && replies[3].starts_with("250"),
        "{replies:?}"
    );
    assert!(end.starts_with("250"), "{end}");
    assert!(up.wait_stored(1, WAIT), "{}", gw.log());
    // devnull was dropped; the archive got its copy.
    assert_eq!(recipients(&up), ["archive@a.test", "u@a.test"]);

    let (replies, end) = send(&gw, "s@client.test", &["suspect@a.test"]);
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert!(end.starts_with("250"), "{end}");
    assert!(gw.log().contains("quarantined"), "{}", gw.log());
}

/// A changed rule is in force after `mailgate reload`, without a restart.
#[test]
fn a_rule_change_is_picked_up_by_a_hot_reload() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Upstream::start(&[]);
    let mut second = Upstream::start(&[]);
    let rules = |up: &Upstream| {
        format!(
            "rules = [{{ domain = \"a.test\", action = \"relay\", host = \"{}\", tls = \"disabled\" }}]",
            up.addr()
        )
    };
    let gw = gateway(dir.path(), &["a.test"], &rules(&first));
    let (_, end) = send(&gw, "s@client.test", &["one@a.test"]);
    assert!(end.starts_with("250"), "{end}");
    assert!(first.wait_stored(1, WAIT), "{}", gw.log());

    let config = std::fs::read_to_string(&gw.config).unwrap();
    let changed = config.replace(&first.addr(), &second.addr());
    assert_ne!(config, changed);
    std::fs::write(&gw.config, changed).unwrap();
    let (ok, out, err) =
        support::mailgate(&["reload", "--config", &gw.config.display().to_string()]);
    assert!(ok, "{out}{err}");
    let (_, end) = send(&gw, "s@client.test", &["two@a.test"]);
    assert!(end.starts_with("250"), "{end}");
    assert!(second.wait_stored(1, WAIT), "{}", gw.log());
    assert_eq!(recipients(&first), ["one@a.test"]);
    assert_eq!(recipients(&second), ["two@a.test"]);
}

/// Rule mistakes are refused at load, naming the rule.
#[test]
fn rule_mistakes_name_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    for (config, expect) in [
        (
            "rules = [{ domain = \"a.test\" }]",
            "rules[0].action: a rule needs an action",
        ),
        (
            "rules = [{ action = \"mx\" }, { action = \"teleport\" }]",
            "rules[1].action",
        ),
        ("rules = [{ action = \"relay\" }]", "rules[0].host"),
        (
            "rules = [{ action = \"reject\", reply = \"250 ok\" }]",
            "rules[0].reply",
        ),
        (
            "rules = [{ action = \"local\", verify = true }]",
            "rules[0].verify",
        ),
        (
            "rules = [{ action = \"mx\", client = [\"10.0.0.0/33\"] }]",
            "rules[0].client",
        ),
        (
            "rules = [{ action = \"mx\", colour = \"red\" }]",
            "rules[0].colour",
        ),
        (
            "aliases.\"x@a.test\" = \"not an address\"",
            "aliases.x@a.test",
        ),
        ("routes = []", "routes"),
    ] {
        let path = dir.path().join("g.toml");
        std::fs::write(&path, routing_config(dir.path(), &["a.test"], config)).unwrap();
        let (ok, _, err) =
            support::mailgate(&["check-config", "--config", &path.display().to_string()]);
        assert!(!ok, "{config}: accepted");
        assert!(err.contains(expect), "{config}: {err}");
    }
}

/// `verify = true`: the rule's next hop (a Postfix that knows one mailbox) is asked at
/// RCPT; an unknown recipient is refused with its answer, the second time from the cache;
/// a next hop that is down gives 451.
#[test]
fn recipients_are_verified_against_the_next_hop() {
    let dir = tempfile::tempdir().unwrap();
    let pf = Postfix::start(&["carol@c.test"]);
    let dead = support::DeadPort::new();
    let gw = gateway(
        dir.path(),
        &["c.test", "d.test"],
        &format!(
            "rules = [\n\
             {{ domain = \"c.test\", action = \"relay\", host = \"{}\", tls = \"disabled\", verify = true }},\n\
             {{ domain = \"d.test\", action = \"relay\", host = \"127.0.0.1:{}\", tls = \"disabled\", verify = true }},\n]",
            pf.addr, dead.port
        ),
    );
    let (replies, end) = send(
        &gw,
        "s@client.test",
        &["carol@c.test", "nobody@c.test", "x@d.test"],
    );
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert!(
        replies[1].starts_with("550 5.1.1 <nobody@c.test>: Recipient address rejected: undeliverable address: 550 5.1.1"),
        "{replies:?}"
    );
    assert!(
        replies[1].contains("User unknown"),
        "Postfix's own words: {replies:?}"
    );
    assert!(replies[2].starts_with("451 4.4.3"), "{replies:?}");
    assert!(end.starts_with("250"), "{end}");
    // Again: the refusal comes from the cache, no second probe.
    let (replies, _) = send(&gw, "s@client.test", &["nobody@c.test"]);
    assert!(replies[0].starts_with("550 5.1.1"), "{replies:?}");
    let status = gw.status();
    assert_eq!(status["verify"]["cache_hits"], 1, "{status}");
    assert!(
        pf.wait_log_count("status=sent", 1, WAIT),
        "carol's message delivered: {}",
        pf.maillog()
    );
}

/// Proxy mode: each transaction is relayed, as it happens, to the next hop the routing
/// plugin sets at RCPT. A recipient for another next hop than the transaction's first is
/// answered `451 4.3.0` and goes through when the client sends it in a transaction of its
/// own; aliases rewrite the recipient the upstream sees; an alias expanding to two next
/// hops, an `mx` route and a `reject` rule are answered at RCPT; a discarded recipient is
/// accepted without being relayed.
#[test]
fn proxy_mode_relays_each_transaction_to_its_route() {
    let mut a = Upstream::start(&[]);
    let mut b = Upstream::start(&[]);
    let gw = Setup::default()
        .section(&format!(
            "[relay]\nlocal_domains = [\"a.test\", \"b.test\", \"m.test\"]\n\
             [delivery]\nmode = \"proxy\"\nupstream = \"{}\"\nupstream_tls = \"none\"\n\
             [[plugin]]\nname = \"routing\"\npath = {:?}\ncapabilities = [\"log\"]\n\
             [plugin.config]\n\
             aliases = {{ \"sales@a.test\" = [\"ann@a.test\"], \"split@a.test\" = [\"ann@a.test\", \"bob@b.test\"] }}\n\
             rules = [\n\
             {{ domain = \"b.test\", action = \"relay\", host = \"{}\", tls = \"disabled\" }},\n\
             {{ recipient = \"void@a.test\", action = \"discard\" }},\n\
             {{ domain = \"m.test\", action = \"mx\" }},\n\
             {{ recipient = \"no@a.test\", action = \"reject\" }},\n]\n",
            a.addr(),
            shipped("routing").display().to_string(),
            b.addr(),
        ))
        .start();
    // First recipient on the default upstream (a), rewritten by an alias; the b.test one
    // is sent back to be tried in a transaction of its own.
    let (replies, end) = send(&gw, "s@client.test", &["sales@a.test", "bob@b.test"]);
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert!(replies[1].starts_with("451 4.3.0"), "{replies:?}");
    assert!(end.starts_with("250"), "{end}\n{}", gw.log());
    assert!(a.wait_stored(1, WAIT), "{}", gw.log());
    assert_eq!(recipients(&a), ["ann@a.test"]);
    // The client's retry of it alone: relayed to b.
    let (replies, end) = send(&gw, "s@client.test", &["bob@b.test"]);
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert!(end.starts_with("250"), "{end}");
    assert!(b.wait_stored(1, WAIT), "{}", gw.log());
    assert_eq!(recipients(&b), ["bob@b.test"]);
    // Refused at RCPT: an alias to two next hops, a route proxy mode cannot serve, a rule.
    let (replies, end) = send(
        &gw,
        "s@client.test",
        &["split@a.test", "x@m.test", "no@a.test", "void@a.test"],
    );
    assert!(replies[0].starts_with("451 4.3.0"), "{replies:?}");
    assert!(replies[1].starts_with("451 4.3.5"), "{replies:?}");
    assert!(replies[2].starts_with("550"), "{replies:?}");
    // Discarded: accepted, and with nothing else to relay, nothing reaches an upstream.
    assert!(replies[3].starts_with("250"), "{replies:?}");
    assert!(end.starts_with("250"), "{end}");
    let (replies, end) = send(&gw, "s@client.test", &["other@a.test"]);
    assert!(replies[0].starts_with("250") && end.starts_with("250"));
    assert!(a.wait_stored(2, WAIT), "{}", gw.log());
    assert_eq!(recipients(&a), ["ann@a.test", "other@a.test"]);
    assert_eq!(recipients(&b), ["bob@b.test"]);
}
