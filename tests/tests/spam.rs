//! The shipped `spam-score` plugin (plugins/spam-score) in the real gateway: its default
//! rules and configured ones, DNSBL and URIBL zones served by NSD on loopback, thresholds
//! (headers, quarantine, reject), and a corpus of hand-made spam and ham
//! (tests/fixtures/corpus/) with expected verdicts.

mod support;

use support::{Gateway, Nsd, Raw, Setup, shipped};

fn zone(origin: &str, records: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 300\n@ NS ns\n\
         ns A 127.0.0.1\n{records}"
    )
}

/// NSD with: a DNSBL listing 127.0.0.1 (`bl.test`, code 127.0.0.2), a list that refuses
/// (`refuse.test`: 127.255.255.254, Spamhaus's answer to public resolvers), a URIBL
/// listing `spam-domain.co.uk` (`uri.test`), and sender domains with and without MX.
fn dns() -> Nsd {
    Nsd::start(&[
        ("bl.test", &zone("bl.test", "1.0.0.127 A 127.0.0.2\n")),
        (
            "refuse.test",
            &zone("refuse.test", "1.0.0.127 A 127.255.255.254\n"),
        ),
        (
            "uri.test",
            &zone(
                "uri.test",
                "spam-domain.co.uk A 127.0.0.2\nphish.example A 127.0.0.4\n",
            ),
        ),
        (
            "ham.test",
            &zone("ham.test", "@ MX 10 mx\nmx A 192.0.2.25\n"),
        ),
        ("nomx.test", &zone("nomx.test", "www A 192.0.2.80\n")),
    ])
}

/// A gateway with the spam-score plugin: `config` is the plugin's config table body.
fn gateway(nsd: &Nsd, config: &str) -> Gateway {
    Setup::default()
        .section(&format!(
            "[dns]\nservers = [\"{}\"]\nreverse_lookup = false",
            nsd.addr
        ))
        .section(&format!(
            "[[plugin]]\nname = \"spam\"\npath = {:?}\ncapabilities = [\"dns\", \"log\", \"kv\", \"auth-results\"]\n\
             [plugin.config]\n{config}",
            shipped("spam-score").display().to_string()
        ))
        .start()
}

/// The rules every test gateway turns off: reverse lookups are off (loopback), so "no
/// confirmed reverse name" would fire on everything.
const BASE: &str = "rules.NO_FCRDNS.check = \"no_fcrdns\"\nrules.NO_FCRDNS.score = 0\n";

/// One message in one session; the end-of-data reply.
fn send(gw: &Gateway, helo: &str, sender: &str, rcpt: &str, message: &str) -> String {
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd(&format!("EHLO {helo}")).starts_with("250"));
    let r = raw.cmd(&format!("MAIL FROM:<{sender}>"));
    assert!(r.starts_with("250"), "{r}");
    let r = raw.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(r.starts_with("250"), "{r}");
    assert!(raw.cmd("DATA").starts_with("354"));
    raw.send(message.replace('\n', "\r\n").as_bytes());
    raw.cmd(".")
}

fn message(subject: &str, body: &str) -> String {
    format!(
        "From: <a@ham.test>\nTo: <u@example.test>\nSubject: {subject}\n\
         Date: Mon, 30 Nov 2026 10:00:00 +0000\nMessage-ID: <m@ham.test>\n\n{body}"
    )
}

/// The header block of the copy delivered to `local@example.test`, unfolded.
fn delivered(gw: &Gateway, local: &str) -> String {
    let copies = gw.mailbox("example.test", local);
    assert_eq!(
        copies.len(),
        1,
        "{local}: {} copies\n{}",
        copies.len(),
        gw.log()
    );
    let text = String::from_utf8_lossy(&copies[0])
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

fn field<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.split("\r\n")
        .filter_map(|l| l.strip_prefix(&format!("{name}: ")))
        .collect()
}

#[test]
fn clean_and_spam_like_messages_score_as_configured() {
    let nsd = dns();
    let gw = gateway(&nsd, BASE);
    let r = send(
        &gw,
        "mail.ham.test",
        "a@ham.test",
        "clean@example.test",
        &message(
            "Minutes of Tuesday's meeting",
            "Hi all,\nthe minutes are below.\n",
        ),
    );
    assert!(r.starts_with("250"), "{r}");
    let head = delivered(&gw, "clean");
    assert_eq!(
        field(&head, "X-Spam-Status"),
        ["No, score=0.0 required=6.0 tests=none"],
        "{head}"
    );
    assert_eq!(field(&head, "X-Spam-Score"), ["0.0"]);
    assert!(field(&head, "X-Spam-Flag").is_empty());

    let spammy = message(
        "YOU HAVE WON THE JACKPOT!!!",
        "Dear friend,\nyou have won the lottery. Claim your prize at https://bit.ly/claim-now\n",
    );
    let r = send(
        &gw,
        "mail.ham.test",
        "a@ham.test",
        "spammy@example.test",
        &spammy,
    );
    assert!(r.starts_with("250"), "{r}");
    let head = delivered(&gw, "spammy");
    let status = field(&head, "X-Spam-Status");
    assert_eq!(status.len(), 1, "{head}");
    // 1.5 + 1.0 + 2.0 + 2.5 + 1.0 = 8.0
    assert!(
        status[0].starts_with("Yes, score=8.0 required=6.0 tests="),
        "{}",
        status[0]
    );
    for rule in [
        "SUBJ_ALL_CAPS(1.5)",
        "SUBJ_EXCESS_PUNCT(1.0)",
        "SUBJ_SPAMMY_WORDS(2.0)",
        "BODY_LOTTERY(2.5)",
        "URL_SHORTENER(1.0)",
    ] {
        assert!(status[0].contains(rule), "{rule}: {}", status[0]);
    }
    assert_eq!(field(&head, "X-Spam-Flag"), ["YES"]);
}

#[test]
fn reject_and_quarantine_thresholds() {
    let nsd = dns();
    let gw = gateway(&nsd, &format!("{BASE}reject_at = 6\nquarantine_at = 3\n"));
    let r = send(
        &gw,
        "mail.ham.test",
        "a@ham.test",
        "r@example.test",
        &message(
            "YOU HAVE WON!!!",
            "You have won the lottery: https://bit.ly/x\n",
        ),
    );
    assert!(
        r.starts_with("550 5.7.1 Message rejected as spam (score 6.0, BODY_LOTTERY"),
        "{r}"
    );
    assert!(gw.mailbox("example.test", "r").is_empty());
    // 2.5 + 1.0: over quarantine_at, under reject_at.
    let r = send(
        &gw,
        "mail.ham.test",
        "a@ham.test",
        "q@example.test",
        &message("Notice", "You have won the lottery: https://bit.ly/x\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(
        gw.mailbox("example.test", "q").is_empty(),
        "quarantined, not delivered"
    );
    assert!(gw.log().contains("quarantined"), "{}", gw.log());
}

/// DNSBL listings are scored at connect, URIBL listings of the URLs' registered domains at
/// DATA; a list's "query refused" answers never score and are logged once.
#[test]
fn dnsbl_and_uribl_listings_score_and_refusals_do_not() {
    let nsd = dns();
    let gw = gateway(
        &nsd,
        &format!(
            "{BASE}dnsbl.bl.zone = \"bl.test\"\ndnsbl.bl.score = 4\n\
             dnsbl.bl.returns = [\"127.0.0.2=5.5\"]\n\
             dnsbl.refusing.zone = \"refuse.test\"\ndnsbl.refusing.score = 10\n\
             uribl.uri.zone = \"uri.test\"\nuribl.uri.score = 3\n\
             uribl.uri.returns = [\"127.0.0.4=4.5\"]\n"
        ),
    );
    for (who, body) in [
        (
            "one",
            "See http://www.spam-domain.co.uk/offer and https://clean.example.com/.\n",
        ),
        ("two", "Nothing listed here: https://clean.example.com/\n"),
        (
            "three",
            "<a href=\"https://login.phish.example/x\">log in</a>\n",
        ),
    ] {
        let r = send(
            &gw,
            "mail.ham.test",
            "a@ham.test",
            &format!("{who}@example.test"),
            &message("Hello", body),
        );
        assert!(r.starts_with("250"), "{who}: {r}");
    }
    let status = |who: &str| field(&delivered(&gw, who), "X-Spam-Status")[0].to_string();
    let one = status("one");
    assert!(one.contains("DNSBL_BL(5.5)"), "{one}");
    assert!(one.contains("URIBL_URI(3.0)"), "{one}");
    assert!(one.contains("score=8.5"), "{one}");
    assert!(!one.contains("REFUSING"), "{one}");
    let two = status("two");
    assert!(
        two.contains("DNSBL_BL(5.5)") && !two.contains("URIBL"),
        "{two}"
    );
    let three = status("three");
    assert!(three.contains("URIBL_URI(4.5)"), "{three}");
    let log = gw.log();
    assert_eq!(
        log.matches("refuse.test answered").count(),
        1,
        "reported once (kv remembers it for an hour):\n{log}"
    );
}

/// Configured rules of every kind, composites, and the built-in checks.
#[test]
fn configured_rules_composites_and_checks() {
    let nsd = dns();
    let gw = gateway(
        &nsd,
        &format!(
            "{BASE}default_rules = false\n\
             rules.INVOICE.header = \"Subject\"\nrules.INVOICE.regex = \"(?i)invoice\"\nrules.INVOICE.score = 1\n\
             rules.ZIP.attachment_name = \"(?i)\\\\.zip$\"\nrules.ZIP.score = 2\n\
             rules.INVOICE_ZIP.all_of = [\"INVOICE\", \"ZIP\"]\nrules.INVOICE_ZIP.score = 3\n\
             rules.NOT_ZIP.all_of = [\"INVOICE\"]\nrules.NOT_ZIP.none_of = [\"ZIP\"]\nrules.NOT_ZIP.score = 0.5\n\
             rules.NOMX.check = \"sender_domain_no_mx\"\nrules.NOMX.score = 2.5\n\
             rules.BADHELO.check = \"helo_not_fqdn\"\nrules.BADHELO.score = 1.5\n\
             rules.FROM_SENDER.sender = \"^billing@\"\nrules.FROM_SENDER.score = 0.7\n\
             rules.SPF_NONE.auth = \"spf:none\"\nrules.SPF_NONE.score = 0.2\n\
             rules.SPF_PASS.auth = \"spf:pass\"\nrules.SPF_PASS.score = 5\n"
        ),
    );
    let zipped = "From: <billing@nomx.test>\nTo: <u@example.test>\nSubject: Your invoice\n\
         Date: Mon, 30 Nov 2026 10:00:00 +0000\nMessage-ID: <z@nomx.test>\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\n\
         See attached.\n--b\nContent-Type: application/zip\n\
         Content-Disposition: attachment; filename=\"Invoice.ZIP\"\n\
         Content-Transfer-Encoding: base64\n\nUEsDBA==\n--b--\n";
    let r = send(
        &gw,
        "workstation",
        "billing@nomx.test",
        "z@example.test",
        zipped,
    );
    assert!(r.starts_with("250"), "{r}");
    let status = field(&delivered(&gw, "z"), "X-Spam-Status")[0].to_string();
    assert!(
        status.starts_with("Yes, score=10.9 "),
        "1 + 2 + 3 + 2.5 + 1.5 + 0.7 + 0.2: {status}"
    );
    // The sender's domain publishes no SPF record: the auth rule sees `none` (the name
    // RFC 8601 gives it), and not `pass`.
    for rule in [
        "INVOICE(1.0)",
        "ZIP(2.0)",
        "INVOICE_ZIP(3.0)",
        "NOMX(2.5)",
        "BADHELO(1.5)",
        "FROM_SENDER(0.7)",
        "SPF_NONE(0.2)",
    ] {
        assert!(status.contains(rule), "{rule}: {status}");
    }
    assert!(!status.contains("NOT_ZIP"), "{status}");
    let plain = message("Invoice 42", "No attachment.\n");
    let r = send(&gw, "mail.ham.test", "a@ham.test", "p@example.test", &plain);
    assert!(r.starts_with("250"), "{r}");
    let status = field(&delivered(&gw, "p"), "X-Spam-Status")[0].to_string();
    assert_eq!(
        status,
        "No, score=1.7 required=6.0 tests=INVOICE(1.0), SPF_NONE(0.2), NOT_ZIP(0.5)"
    );
}

/// `X-Spam-*` headers that come with the message are not believed: they are replaced.
#[test]
fn incoming_spam_headers_are_replaced() {
    let nsd = dns();
    let gw = gateway(&nsd, BASE);
    let forged = format!(
        "X-Spam-Status: No, score=-100\nX-Spam-Flag: NO\nX-Spam-Score: -100\n{}",
        message(
            "YOU HAVE WON!!!",
            "You have won the lottery: https://bit.ly/x\n"
        )
    );
    let r = send(
        &gw,
        "mail.ham.test",
        "a@ham.test",
        "f@example.test",
        &forged,
    );
    assert!(r.starts_with("250"), "{r}");
    let head = delivered(&gw, "f");
    assert_eq!(field(&head, "X-Spam-Flag"), ["YES"], "{head}");
    assert_eq!(field(&head, "X-Spam-Score"), ["6.0"], "{head}");
    assert_eq!(field(&head, "X-Spam-Status").len(), 1, "{head}");
}

/// Mistakes in the rules are refused at load, naming the key.
#[test]
fn config_mistakes_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (config, expect) in [
        ("rules.X.body = \"(unclosed\"", "rules.X.body"),
        // Patterns are compiled by the gateway (the `patterns` interface), each kind
        // together: the error still names the rule and key at fault.
        (
            "rules.A.url = \"fine\"\nrules.X.url = \"[z-a]\"",
            "rules.X.url",
        ),
        (
            "rules.A.header = \"Subject\"\nrules.A.regex = \"ok\"\n\
             rules.X.header = \"subject\"\nrules.X.regex = \"(\\\\w{100}){100}\"",
            "rules.X.regex",
        ),
        ("rules.X.bodyy = \"a\"", "bodyy"),
        ("rules.X.score = 1", "says nothing to look at"),
        (
            "rules.X.all_of = [\"NOPE\"]",
            "\"NOPE\" is not a (non-composite) rule",
        ),
        ("rules.X.check = \"moon_phase\"", "moon_phase"),
        ("dnsbl.x.score = 2", "dnsbl.x.zone"),
        (
            "dnsbl.x.zone = \"a.test\"\ndnsbl.x.returns = [\"127.0.0.2\"]",
            "CODE=POINTS",
        ),
        ("treshold = 5", "treshold"),
    ] {
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            format!(
                "[[plugin]]\nname = \"spam\"\npath = {:?}\n[plugin.config]\n{config}\n",
                shipped("spam-score").display().to_string()
            ),
        )
        .unwrap();
        let (ok, _, err) =
            support::mailgate(&["check-config", "--config", &path.display().to_string()]);
        assert!(!ok, "{config}: accepted");
        assert!(err.contains(expect), "{config}: {err}");
    }
}

/// Every message of tests/fixtures/corpus/ gets the verdict its `X-Corpus-Expect` header
/// names, with the default rules and a URIBL.
#[test]
fn corpus_verdicts() {
    let nsd = dns();
    let gw = gateway(
        &nsd,
        &format!(
            "{BASE}uribl.uri.zone = \"uri.test\"\nuribl.uri.score = 3\n\
             uribl.uri.returns = [\"127.0.0.4=6.5\"]\n"
        ),
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    assert!(files.len() >= 24, "the corpus has {} messages", files.len());
    let mut wrong = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let text = std::fs::read_to_string(path).unwrap();
        let header = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("{}: no {name}", path.display()))
                .to_string()
        };
        let (expect, sender) = (header("X-Corpus-Expect"), header("X-Corpus-Sender"));
        let rcpt = format!("c{i}");
        let r = send(
            &gw,
            "mail.ham.test",
            &sender,
            &format!("{rcpt}@example.test"),
            &text,
        );
        let got = if r.starts_with("550 5.7.1") {
            "reject".to_string()
        } else if r.starts_with("250") {
            let head = delivered(&gw, &rcpt);
            let status = field(&head, "X-Spam-Status").join(" ");
            if status.starts_with("Yes") {
                format!("spam ({status})")
            } else {
                format!("ham ({status})")
            }
        } else {
            format!("reply {r}")
        };
        if got.split(' ').next() != Some(expect.as_str()) {
            let name = path.file_name().unwrap().to_string_lossy();
            wrong.push(format!("{name}: expected {expect}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// With the greylist plugin in `defer_to_score` mode, only suspicious messages (score at
/// least `greylist_at`) of a new triplet are deferred, at the end of DATA; their retry
/// after the delay is accepted, and a clean message is never deferred.
#[test]
fn suspicious_messages_of_new_triplets_are_greylisted() {
    let nsd = dns();
    let gw = Setup::default()
        .env("MAILGATE_CHAIN__ADJUSTABLE_CLOCK", "true")
        .section(&format!(
            "[dns]\nservers = [\"{}\"]\nreverse_lookup = false",
            nsd.addr
        ))
        .section(&format!(
            "[[plugin]]\nname = \"greylist\"\npath = {:?}\ncapabilities = [\"kv\", \"clock\", \"log\"]\n\
             config = {{ defer_to_score = true, delay_secs = 300 }}\n",
            shipped("greylist").display().to_string()
        ))
        .section(&format!(
            "[[plugin]]\nname = \"spam\"\npath = {:?}\ncapabilities = [\"dns\", \"log\", \"kv\", \"auth-results\"]\n\
             [plugin.config]\n{BASE}greylist_at = 4\n",
            shipped("spam-score").display().to_string()
        ))
        .start();
    // 2.5 + 1.0 + 1.0: suspicious, under add_header_at.
    let suspicious = message("Notice!!!", "You have won the lottery: https://bit.ly/x\n");
    let r = send(
        &gw,
        "mail.ham.test",
        "a@ham.test",
        "s@example.test",
        &suspicious,
    );
    assert!(
        r.starts_with("451 4.7.1 Suspicious message greylisted"),
        "{r}"
    );
    let clean = message("Lunch", "See you at noon.\n");
    let r = send(&gw, "mail.ham.test", "b@ham.test", "c@example.test", &clean);
    assert!(r.starts_with("250"), "a clean message is not deferred: {r}");
    // An early retry is deferred again; one after the delay is accepted.
    let r = send(
        &gw,
        "mail.ham.test",
        "a@ham.test",
        "s@example.test",
        &suspicious,
    );
    assert!(r.starts_with("451 4.7.1"), "early retry: {r}");
    let cfg = gw.config.display().to_string();
    let (ok, _, err) = support::mailgate(&["clock", "advance", "301", "--config", &cfg]);
    assert!(ok, "{err}");
    let r = send(
        &gw,
        "mail.ham.test",
        "a@ham.test",
        "s@example.test",
        &suspicious,
    );
    assert!(r.starts_with("250"), "retry after the delay: {r}");
    let head = delivered(&gw, "s");
    assert!(
        field(&head, "X-Spam-Status")[0].starts_with("No, score=4.5"),
        "{head}"
    );
    assert_eq!(field(&head, "X-Greylist").len(), 1, "{head}");
}

/// Points given earlier in the same stage count for the plugins after: a plugin after
/// spam-score at DATA sees spam-score's points in the session's score (the `auth`
/// plugin's SPF/DMARC points reach spam-score the same way).
#[test]
fn later_plugins_of_a_stage_see_the_points_given_before_them() {
    let nsd = dns();
    let gw = Setup::default()
        .section(&format!(
            "[dns]\nservers = [\"{}\"]\nreverse_lookup = false",
            nsd.addr
        ))
        .section(&format!(
            "[[plugin]]\nname = \"spam\"\npath = {:?}\ncapabilities = [\"dns\", \"log\", \"kv\"]\n\
             [plugin.config]\n{BASE}default_rules = false\n\
             rules.HELLO.body = \"(?i)hello there\"\nrules.HELLO.score = 2.5\n\
             [[plugin]]\nname = \"adder\"\npath = {:?}\n\
             [plugin.config]\nconnect_points = 1\n",
            shipped("spam-score").display().to_string(),
            support::fixture("header-adder").display().to_string()
        ))
        .start();
    let r = send(
        &gw,
        "mail.ham.test",
        "a@ham.test",
        "s@example.test",
        &message("Hi", "Hello there.\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    let head = delivered(&gw, "s");
    // 1 from the adder at connect, 2.5 from spam-score at DATA, before the adder's turn.
    assert_eq!(field(&head, "X-Score"), ["3.5"], "{head}");
}
