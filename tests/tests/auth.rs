//! SPF, DKIM and DMARC end to end: the shipped `auth` plugin (plugins/auth) in the real
//! gateway, messages signed by dkimpy (tests/peers/dkimsign.py), every DNS answer from NSD on
//! loopback serving the test zones, a real SMTP conversation for each message.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::{Gateway, Nsd, Raw, Setup, peer, shipped};

/// Our host name, hence the authserv-id of `Authentication-Results`.
const HOST: &str = "mx.auth.test";

/// A TXT value split into the 255-octet strings of a zone file.
fn txt(value: &str) -> String {
    value
        .as_bytes()
        .chunks(250)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn zone(origin: &str, records: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 300\n@ NS ns\n\
         ns A 127.0.0.1\n{records}"
    )
}

/// `dkimsign.py keygen`: the key file in `dir` and the `p=` value.
fn keygen(dir: &Path, kind: &str, bits: &str) -> (String, String) {
    let key = dir.join(format!("{kind}-{bits}.key")).display().to_string();
    let out = Command::new("python3")
        .arg(peer("dkimsign.py"))
        .args(["keygen", kind, &key, bits])
        .output()
        .expect("python3 dkimsign.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        key,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

/// `tests/peers/dkimsign.py` with `args`, `message` on its stdin; its output.
fn dkimsign(args: &[&str], message: &[u8]) -> Vec<u8> {
    let mut child = Command::new("python3")
        .arg(peer("dkimsign.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 dkimsign.py");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `message` signed by dkimpy.
fn sign(
    key: &str,
    domain: &str,
    selector: &str,
    kind: &str,
    canon: &str,
    message: &[u8],
) -> Vec<u8> {
    dkimsign(&["sign", key, domain, selector, kind, canon], message)
}

/// The test world: zones for `good.test` (SPF allows us, signed mail, p=reject),
/// `spoofed.test` (SPF allows someone else, p=reject) and `quarantined.test`
/// (p=quarantine); a gateway with the auth plugin resolving through them.
struct World {
    _nsd: Nsd,
    gw: Gateway,
    _keys: tempfile::TempDir,
    rsa: String,
    ed: String,
    weak: String,
}

fn world(plugin_config: &str) -> World {
    let keys = tempfile::tempdir().unwrap();
    let (rsa, rsa_p) = keygen(keys.path(), "rsa", "2048");
    let (ed, ed_p) = keygen(keys.path(), "ed25519", "0");
    let (weak, weak_p) = keygen(keys.path(), "rsa", "512");
    let good = zone(
        "good.test",
        &format!(
            "@ TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
             rsa._domainkey TXT {}\n\
             ed._domainkey TXT {}\n\
             weak._domainkey TXT {}\n\
             _dmarc TXT \"v=DMARC1; p=reject\"\n",
            txt(&format!("v=DKIM1; k=rsa; p={rsa_p}")),
            txt(&format!("v=DKIM1; k=ed25519; p={ed_p}")),
            txt(&format!("v=DKIM1; k=rsa; p={weak_p}")),
        ),
    );
    let spoofed = zone(
        "spoofed.test",
        "@ TXT \"v=spf1 ip4:192.0.2.1 -all\"\n_dmarc TXT \"v=DMARC1; p=reject\"\n",
    );
    let quarantined = zone(
        "quarantined.test",
        "@ TXT \"v=spf1 ip4:192.0.2.1 -all\"\n_dmarc TXT \"v=DMARC1; p=quarantine\"\n",
    );
    // The parent zone too: DMARC's tree walk asks `_dmarc.test` (NXDOMAIN there, where a
    // server without the zone would refuse, a temporary error).
    let tld = zone("test", "");
    // One SPF case per name: MAIL FROM a@<case>.spf.test.
    let mut spf_cases = String::from(
        "pass TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
         fail TXT \"v=spf1 ip4:192.0.2.1 -all\"\n\
         softfail TXT \"v=spf1 ~all\"\n\
         neutral TXT \"v=spf1 ?all\"\n\
         perm TXT \"v=spf1 -all\"\n\
         perm TXT \"v=spf1 +all\"\n\
         unknown TXT \"v=spf1 frobnicate:x -all\"\n\
         loop TXT \"v=spf1 include:loop.spf.test -all\"\n\
         macro TXT \"v=spf1 exists:%{i}.allow.spf.test -all\"\n\
         127.0.0.1.allow A 127.0.0.2\n\
         many TXT \"v=spf1 include:i1.spf.test -all\"\n\
         void TXT \"v=spf1 a:n1.spf.test mx:n2.spf.test exists:n3.spf.test +all\"\n\
         exists6 TXT \"v=spf1 exists:only6.spf.test -all\"\n\
         only6 AAAA ::1\n\
         incbad TXT \"v=spf1 include:bad.spf.test -all\"\n\
         bad TXT \"v=spf1 ip4:127.0.0.1/33 +all\"\n\
         temp TXT \"v=spf1 a:x.down.test -all\"\n",
    );
    // An include chain of 11 lookups: past RFC 7208's 10.
    for i in 1..=11 {
        spf_cases.push_str(&format!(
            "i{i} TXT \"v=spf1 include:i{}.spf.test -all\"\n",
            i + 1
        ));
    }
    spf_cases.push_str("i12 TXT \"v=spf1 ip4:127.0.0.1 -all\"\n");
    let spf = zone("spf.test", &spf_cases);
    // DMARC: alignment modes, a subdomain policy, pct.
    let aligned = |policy: &str| {
        format!(
            "@ TXT \"v=spf1 -all\"\nmail TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
             _dmarc TXT \"{policy}\"\n"
        )
    };
    let strict = zone("strict.test", &aligned("v=DMARC1; p=reject; aspf=s"));
    let relaxed = zone("relaxed.test", &aligned("v=DMARC1; p=reject"));
    let parent = zone(
        "parent.test",
        "@ TXT \"v=spf1 -all\"\nsub A 192.0.2.1\n_dmarc TXT \"v=DMARC1; p=none; sp=reject\"\n",
    );
    let pct = zone(
        "pct.test",
        "@ TXT \"v=spf1 -all\"\n_dmarc TXT \"v=DMARC1; p=reject; pct=0\"\n",
    );
    let nsd = Nsd::start(&[
        ("test", &tld),
        ("strict.test", &strict),
        ("relaxed.test", &relaxed),
        ("parent.test", &parent),
        ("pct.test", &pct),
        ("spf.test", &spf),
        ("good.test", &good),
        ("spoofed.test", &spoofed),
        ("quarantined.test", &quarantined),
        // No SOA: NSD cannot load the zone and answers SERVFAIL for every name in it.
        ("down.test", "; no SOA record\n"),
    ]);
    let gw = Setup::default()
        .server(&format!("hostname = \"{HOST}\""))
        .section(&format!("[dns]\nservers = [\"{}\"]\nreverse_lookup = false", nsd.addr))
        .section(&format!(
            "[[plugin]]\nname = \"auth\"\npath = {:?}\ncapabilities = [\"auth-results\"]\n{plugin_config}",
            shipped("auth").display().to_string()
        ))
        .start();
    World {
        _nsd: nsd,
        gw,
        _keys: keys,
        rsa,
        ed,
        weak,
    }
}

/// Sends `message` from `sender` to `rcpt` in one session; the end-of-data reply.
fn send(gw: &Gateway, sender: &str, rcpt: &str, message: &[u8]) -> String {
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO client.good.test").starts_with("250"));
    let r = raw.cmd(&format!("MAIL FROM:<{sender}>"));
    assert!(r.starts_with("250"), "{r}");
    assert!(raw.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(raw.cmd("DATA").starts_with("354"));
    raw.send(message);
    raw.cmd(".")
}

fn message(from: &str, body: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <u@example.test>\r\nSubject: auth test\r\n\
         Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <t@good.test>\r\n\r\n{body}"
    )
    .into_bytes()
}

/// The `Authentication-Results` fields of a delivered copy, unfolded.
fn results(copy: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(copy)
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    text.split("\r\n")
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.strip_prefix("Authentication-Results: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn signed_messages_are_delivered_with_accurate_results() {
    let w = world("");
    let body = "Signed by dkimpy.\r\n  with trailing spaces  \r\n\r\n";
    for (i, (key, sel, kind, canon)) in [
        (&w.rsa, "rsa", "rsa", "relaxed/relaxed"),
        (&w.rsa, "rsa", "rsa", "simple/simple"),
        (&w.ed, "ed", "ed25519", "relaxed/simple"),
    ]
    .into_iter()
    .enumerate()
    {
        let signed = sign(
            key,
            "good.test",
            sel,
            kind,
            canon,
            &message("a@good.test", body),
        );
        let rcpt = format!("u{i}@example.test");
        let r = send(&w.gw, "a@good.test", &rcpt, &signed);
        assert!(r.starts_with("250"), "{kind} {canon}: {r}");
        let copy = &w.gw.mailbox("example.test", &format!("u{i}"))[0];
        let ar = results(copy);
        assert_eq!(ar.len(), 1, "{ar:?}");
        let ar = &ar[0];
        assert!(ar.starts_with(&format!("{HOST};")), "{ar}");
        assert!(ar.contains("dkim=pass"), "{kind} {canon}: {ar}");
        assert!(
            ar.contains("header.d=good.test") || ar.contains("header.i=@good.test"),
            "{ar}"
        );
        assert!(ar.contains(&format!("header.s={sel}")), "{ar}");
        assert!(ar.contains("spf=pass"), "{ar}");
        assert!(ar.contains("dmarc=pass"), "{ar}");
    }
}

#[test]
fn tampered_weak_and_missing_signatures_do_not_pass() {
    let w = world("");
    let signed = sign(
        &w.rsa,
        "good.test",
        "rsa",
        "rsa",
        "relaxed/relaxed",
        &message("a@good.test", "Original body.\r\n"),
    );
    let tampered = String::from_utf8(signed)
        .unwrap()
        .replace("Original body.", "Changed body.");
    // A 512-bit key (RFC 8301: under 1024 bits must not pass).
    let weak = sign(
        &w.weak,
        "good.test",
        "weak",
        "rsa",
        "relaxed/relaxed",
        &message("a@good.test", "Weak.\r\n"),
    );
    // rsa-sha1 (RFC 8301: must not pass).
    let sha1 = sign(
        &w.rsa,
        "good.test",
        "rsa",
        "rsa-sha1",
        "relaxed/relaxed",
        &message("a@good.test", "Sha1.\r\n"),
    );
    for (who, text) in [
        ("tampered", tampered.into_bytes()),
        ("weak", weak),
        ("sha1", sha1),
    ] {
        // SPF still passes and aligns, so DMARC passes and the mail is delivered.
        let r = send(&w.gw, "a@good.test", &format!("{who}@example.test"), &text);
        assert!(r.starts_with("250"), "{who}: {r}");
        let ar = results(&w.gw.mailbox("example.test", who)[0]).join(" ");
        assert!(!ar.contains("dkim=pass"), "{who}: {ar}");
        let expected = match who {
            "weak" => "dkim=fail (RSA key of 512 bits is under 1024",
            "sha1" => "dkim=policy (rsa-sha1 is not accepted",
            _ => "dkim=fail",
        };
        assert!(ar.contains(expected), "{who}: {ar}");
        assert!(ar.contains("dmarc=pass"), "{who}: {ar}");
    }
}

#[test]
fn a_spoofed_message_from_a_p_reject_domain_is_refused_at_data() {
    let w = world("");
    let r = send(
        &w.gw,
        "x@spoofed.test",
        "u@example.test",
        &message("boss@spoofed.test", "Pay this invoice.\r\n"),
    );
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert!(r.contains("spoofed.test") && r.contains("DMARC"), "{r}");
    assert!(w.gw.mailbox("example.test", "u").is_empty());
    // p=quarantine: accepted into quarantine, not the mailbox.
    let r = send(
        &w.gw,
        "x@quarantined.test",
        "q@example.test",
        &message("boss@quarantined.test", "Hi.\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(
        w.gw.mailbox("example.test", "q").is_empty(),
        "quarantined, not delivered"
    );
    assert!(w.gw.log().contains("quarantined"), "{}", w.gw.log());
}

#[test]
fn forged_results_claiming_our_name_are_removed_and_others_kept() {
    let w = world("");
    let mut m = format!(
        "Authentication-Results: {HOST}; dkim=pass header.d=bank.test\r\n\
         Authentication-Results: other.test; spf=pass smtp.mailfrom=a@good.test\r\n"
    )
    .into_bytes();
    m.extend(message("a@good.test", "Hello.\r\n"));
    let r = send(&w.gw, "a@good.test", "u@example.test", &m);
    assert!(r.starts_with("250"), "{r}");
    let ar = results(&w.gw.mailbox("example.test", "u")[0]);
    assert_eq!(ar.len(), 2, "ours and the other one: {ar:?}");
    assert!(ar.iter().any(|a| a.starts_with("other.test;")), "{ar:?}");
    assert!(
        !ar.iter().any(|a| a.contains("bank.test")),
        "the forged one is gone: {ar:?}"
    );
}

#[test]
fn spf_fail_can_be_refused_at_mail_from() {
    let w = world("config = { spf_fail = \"reject-mail\" }");
    let mut raw = Raw::connect(w.gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO client.good.test").starts_with("250"));
    let r = raw.cmd("MAIL FROM:<x@spoofed.test>");
    assert!(r.starts_with("550 5.7.23"), "{r}");
    assert!(raw.cmd("MAIL FROM:<a@good.test>").starts_with("250"));
}

/// DNS that does not answer is never a reason for a 5xx: the DMARC policy cannot be
/// known, so the message is deferred (`451 4.7.5`).
#[test]
fn dns_that_does_not_answer_defers_never_refuses() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let gw = Setup::default()
        .server(&format!("hostname = \"{HOST}\""))
        .section(&format!(
            "[dns]\nservers = [\"{}\"]\ntimeout_ms = 300\nattempts = 1\nreverse_lookup = false",
            silent.local_addr().unwrap()
        ))
        .section(&format!(
            "[[plugin]]\nname = \"auth\"\npath = {:?}\ncapabilities = [\"auth-results\"]\n\
             limits = {{ deadline_ms = 30000 }}",
            shipped("auth").display().to_string()
        ))
        .start();
    let r = send(
        &gw,
        "x@spoofed.test",
        "u@example.test",
        &message("boss@spoofed.test", "Hi.\r\n"),
    );
    assert!(r.starts_with("451 4.7.5"), "{r}");
}

/// Allowlisted clients and domains are never refused: the spoofed p=reject message from
/// a trusted network is delivered, its DMARC failure recorded in the header.
#[test]
fn trusted_networks_and_domains_are_not_refused() {
    for config in [
        "config = { trusted_networks = [\"192.0.2.0/24\", \"127.0.0.0/8\"] }",
        "config = { trusted_domains = [\"spoofed.test\"] }",
    ] {
        let w = world(config);
        let r = send(
            &w.gw,
            "x@spoofed.test",
            "u@example.test",
            &message("boss@spoofed.test", "Hi.\r\n"),
        );
        assert!(r.starts_with("250"), "{config}: {r}");
        let ar = results(&w.gw.mailbox("example.test", "u")[0]).join(" ");
        assert!(ar.contains("dmarc=fail"), "{config}: {ar}");
    }
    // And a network that does not contain the client changes nothing.
    let w = world("config = { trusted_networks = [\"192.0.2.0/24\", \"::1/128\"] }");
    let r = send(
        &w.gw,
        "x@spoofed.test",
        "u@example.test",
        &message("boss@spoofed.test", "Hi.\r\n"),
    );
    assert!(r.starts_with("550 5.7.1"), "{r}");
}

/// SPF results for the MAIL FROM identity, as the `Authentication-Results` header reports
/// them: every RFC 7208 result, the 10-lookup and void-lookup limits, an include loop, a
/// macro, `exists:` on A records only, a broken included record, a server failure.
#[test]
fn spf_results_cover_the_rfc() {
    let w = world("");
    let mut wrong = Vec::new();
    for (case, result) in [
        ("pass", "spf=pass"),
        ("fail", "spf=fail"),
        ("softfail", "spf=softfail"),
        ("neutral", "spf=neutral"),
        ("none", "spf=none"),
        ("perm", "spf=permerror"),
        ("unknown", "spf=permerror"),
        ("loop", "spf=permerror"),
        ("many", "spf=permerror"),
        ("macro", "spf=pass"),
        // Three lookups that find nothing: past RFC 7208's 2 void lookups.
        ("void", "spf=permerror"),
        // exists: looks at A records only (mail-auth 0.13 also took AAAA).
        ("exists6", "spf=fail"),
        // The grammar holds in included records too (a /33 prefix).
        ("incbad", "spf=permerror"),
        // A DNS server failure (SERVFAIL) is temporary.
        ("temp", "spf=temperror"),
    ] {
        let sender = format!("a@{case}.spf.test");
        let rcpt = format!("{case}@example.test");
        let r = send(&w.gw, &sender, &rcpt, &message(&sender, "SPF.\r\n"));
        assert!(r.starts_with("250"), "{case}: {r}");
        let ar = results(&w.gw.mailbox("example.test", case)[0]).join(" ");
        if !ar.contains(result) {
            wrong.push(format!("{case}: want {result}: {ar}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// DMARC beyond p=reject: relaxed and strict SPF alignment, a subdomain policy (`sp=`),
/// `pct=0`, and several From domains (exempt from DMARC).
#[test]
fn dmarc_alignment_subdomain_policy_pct_and_several_from_domains() {
    let w = world("");
    // SPF passes for mail.<domain>; From is <domain>: aligned when relaxed only.
    let r = send(
        &w.gw,
        "a@mail.relaxed.test",
        "r@example.test",
        &message("a@relaxed.test", "Hi.\r\n"),
    );
    assert!(r.starts_with("250"), "relaxed alignment: {r}");
    let ar = results(&w.gw.mailbox("example.test", "r")[0]).join(" ");
    assert!(ar.contains("dmarc=pass"), "{ar}");
    let r = send(
        &w.gw,
        "a@mail.strict.test",
        "s@example.test",
        &message("a@strict.test", "Hi.\r\n"),
    );
    assert!(
        r.starts_with("550 5.7.1") && r.contains("strict.test"),
        "strict alignment: {r}"
    );
    // No record at sub.parent.test: the parent's sp=reject applies (its p=none does not).
    let r = send(
        &w.gw,
        "x@spoofed.test",
        "u@example.test",
        &message("boss@sub.parent.test", "Hi.\r\n"),
    );
    assert!(
        r.starts_with("550 5.7.1") && r.contains("sub.parent.test"),
        "sp=reject: {r}"
    );
    // pct=0: no message is in the sample, so p=reject becomes quarantine (RFC 7489 6.6.4).
    let r = send(
        &w.gw,
        "x@spoofed.test",
        "p@example.test",
        &message("boss@pct.test", "Hi.\r\n"),
    );
    assert!(r.starts_with("250"), "pct=0: {r}");
    assert!(w.gw.mailbox("example.test", "p").is_empty(), "quarantined");
    // Two From addresses in different domains: exempt, delivered, dmarc=none.
    let mut two = b"From: <boss@spoofed.test>, <a@good.test>\r\n".to_vec();
    two.extend(b"To: <u@example.test>\r\nSubject: two\r\n\r\nHi.\r\n");
    let r = send(&w.gw, "x@spoofed.test", "t@example.test", &two);
    assert!(r.starts_with("250"), "several From domains: {r}");
    let ar = results(&w.gw.mailbox("example.test", "t")[0]).join(" ");
    assert!(ar.contains("dmarc=none"), "{ar}");
}

/// `message` sealed with one ARC set by `lists.good.test` (dkimpy).
fn arc_seal(key: &str, message: &[u8]) -> Vec<u8> {
    dkimsign(
        &["arc", key, "good.test", "rsa", "lists.good.test"],
        message,
    )
}

/// ARC: a valid chain is reported `arc=pass` (and tagged), one broken by a change after
/// sealing `arc=fail`.
#[test]
fn arc_chains_are_validated() {
    let w = world("");
    let mut m =
        b"Authentication-Results: lists.good.test; spf=pass smtp.mailfrom=a@good.test\r\n".to_vec();
    m.extend(message("a@good.test", "Through a list.\r\n"));
    let sealed = arc_seal(&w.rsa, &m);
    let broken = String::from_utf8(sealed.clone())
        .unwrap()
        .replace("Through a list.", "Changed by someone.")
        .into_bytes();
    for (who, text, want) in [
        ("valid", sealed, "arc=pass"),
        ("broken", broken, "arc=fail"),
    ] {
        let r = send(&w.gw, "a@good.test", &format!("{who}@example.test"), &text);
        assert!(r.starts_with("250"), "{who}: {r}");
        let ar = results(&w.gw.mailbox("example.test", who)[0]);
        let ours = ar.iter().find(|a| a.starts_with(HOST)).expect("our header");
        assert!(ours.contains(want), "{who}: {ours}");
    }
}

/// DKIM bodies mail-auth 0.13 hashes wrong or too leniently: relaxed canonicalization of
/// whitespace-only lines at the end (must pass), and `l=`: a signature covering the whole
/// body passes, one that leaves appended text unsigned is `policy` and does not count.
#[test]
fn relaxed_trailing_whitespace_lines_pass_and_l_leaves_nothing_unsigned() {
    let w = world("");
    let body = "Hi.\r\n  \r\n\t\r\n \t \r\n\r\n";
    for (who, canon) in [("rel", "relaxed/relaxed"), ("sim", "simple/simple")] {
        let signed = sign(
            &w.rsa,
            "good.test",
            "rsa",
            "rsa",
            canon,
            &message("a@good.test", body),
        );
        let r = send(
            &w.gw,
            "a@good.test",
            &format!("{who}@example.test"),
            &signed,
        );
        assert!(r.starts_with("250"), "{canon}: {r}");
        let ar = results(&w.gw.mailbox("example.test", who)[0]).join(" ");
        assert!(ar.contains("dkim=pass"), "{canon}: {ar}");
    }
    let limited = sign(
        &w.rsa,
        "good.test",
        "rsa",
        "rsa",
        "relaxed/relaxed+l",
        &message("a@good.test", "Signed part.\r\n"),
    );
    assert!(String::from_utf8_lossy(&limited).contains("l="));
    let r = send(&w.gw, "a@good.test", "whole@example.test", &limited);
    assert!(r.starts_with("250"), "{r}");
    let ar = results(&w.gw.mailbox("example.test", "whole")[0]).join(" ");
    assert!(ar.contains("dkim=pass"), "{ar}");
    let mut appended = limited.clone();
    appended.extend_from_slice(b"Appended by someone else.\r\n");
    let r = send(&w.gw, "a@good.test", "appended@example.test", &appended);
    assert!(r.starts_with("250"), "{r}");
    let ar = results(&w.gw.mailbox("example.test", "appended")[0]).join(" ");
    assert!(!ar.contains("dkim=pass"), "{ar}");
    assert!(
        ar.contains("dkim=policy (l=14 leaves 27 body octets unsigned"),
        "{ar}"
    );
}

/// Several From header fields (RFC 7489 6.6.1) are a DMARC failure under the strictest
/// policy among their domains; DMARC `p=none` is a failure that is only reported.
#[test]
fn several_from_fields_fail_dmarc_and_p_none_only_reports() {
    let w = world("");
    // SPF passes and aligns with good.test, but a second From field names spoofed.test.
    let mut two = b"From: <a@good.test>\r\nFrom: <boss@spoofed.test>\r\n".to_vec();
    two.extend(b"To: <u@example.test>\r\nSubject: two fields\r\n\r\nHi.\r\n");
    let r = send(&w.gw, "a@good.test", "two@example.test", &two);
    assert!(r.starts_with("550 5.7.1"), "several From fields: {r}");
    // Two fields whose domains publish no DMARC: delivered, reported as a failure.
    let mut plain = b"From: <a@pass.spf.test>\r\nFrom: <b@neutral.spf.test>\r\n".to_vec();
    plain.extend(b"To: <u@example.test>\r\nSubject: two fields\r\n\r\nHi.\r\n");
    let r = send(&w.gw, "a@pass.spf.test", "plain@example.test", &plain);
    assert!(r.starts_with("250"), "{r}");
    let ar = results(&w.gw.mailbox("example.test", "plain")[0]).join(" ");
    assert!(
        ar.contains("dmarc=fail (several From header fields)"),
        "{ar}"
    );
    // parent.test publishes p=none: a spoofed From is delivered, with dmarc=fail.
    let r = send(
        &w.gw,
        "x@spoofed.test",
        "none@example.test",
        &message("boss@parent.test", "Hi.\r\n"),
    );
    assert!(r.starts_with("250"), "p=none: {r}");
    let ar = results(&w.gw.mailbox("example.test", "none")[0]).join(" ");
    assert!(ar.contains("dmarc=fail"), "{ar}");
}

/// A message from a p=reject domain that fails DMARC here, sealed by a list that recorded
/// dmarc=pass: refused, unless the list is a trusted ARC sealer (RFC 8617 7.2); a broken
/// chain or a sealer that recorded no pass overrides nothing. The sealers reach plugins.
#[test]
fn a_trusted_arc_sealer_overrides_a_dmarc_failure() {
    let listed = |recorded: &str| {
        let mut m = format!(
            "Authentication-Results: lists.good.test; {recorded} header.from=spoofed.test\r\n"
        )
        .into_bytes();
        m.extend(message("boss@spoofed.test", "Through a list.\r\n"));
        m
    };
    let plain = world("");
    let sealed = arc_seal(&plain.rsa, &listed("dmarc=pass"));
    let r = send(&plain.gw, "list@good.test", "a@example.test", &sealed);
    assert!(r.starts_with("550 5.7.1"), "no sealer trusted: {r}");

    let trusting = world("config = { trusted_arc_sealers = [\"good.test\"] }");
    let sealed = arc_seal(&trusting.rsa, &listed("dmarc=pass"));
    let r = send(&trusting.gw, "list@good.test", "b@example.test", &sealed);
    assert!(r.starts_with("250"), "trusted sealer: {r}");
    let ar = results(&trusting.gw.mailbox("example.test", "b")[0]).join(" ");
    assert!(ar.contains("dmarc=fail") && ar.contains("arc=pass"), "{ar}");
    // The sealer recorded a failure: nothing to override.
    let failed = arc_seal(&trusting.rsa, &listed("dmarc=fail"));
    let r = send(&trusting.gw, "list@good.test", "c@example.test", &failed);
    assert!(r.starts_with("550 5.7.1"), "recorded fail: {r}");
    // A chain broken after sealing: nothing to override.
    let broken = String::from_utf8(arc_seal(&trusting.rsa, &listed("dmarc=pass")))
        .unwrap()
        .replace("Through a list.", "Changed after sealing.")
        .into_bytes();
    let r = send(&trusting.gw, "list@good.test", "d@example.test", &broken);
    assert!(r.starts_with("550 5.7.1"), "broken chain: {r}");
}

/// A trusted forwarder (by network here; by confirmed reverse name needs a client address
/// outside 127/8, which hickory answers itself as localhost): its SPF failure is not
/// refused and a DMARC failure is only tagged.
#[test]
fn trusted_forwarders_are_not_refused_for_spf_or_dmarc() {
    let w =
        world("config = { spf_fail = \"reject-mail\", trusted_forwarders = [\"127.0.0.0/8\"] }");
    let r = send(
        &w.gw,
        "a@fail.spf.test",
        "f@example.test",
        &message("boss@spoofed.test", "Forwarded.\r\n"),
    );
    assert!(r.starts_with("250"), "forwarded: {r}");
    let ar = results(&w.gw.mailbox("example.test", "f")[0]).join(" ");
    assert!(ar.contains("spf=fail") && ar.contains("dmarc=fail"), "{ar}");
    // The same without the forwarder trusted: refused at MAIL FROM.
    let w = world(
        "config = { spf_fail = \"reject-mail\", trusted_forwarders = [\"192.0.2.0/24\", \"fwd.good.test\"] }",
    );
    let mut raw = Raw::connect(w.gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO client.good.test").starts_with("250"));
    let r = raw.cmd("MAIL FROM:<a@fail.spf.test>");
    assert!(r.starts_with("550 5.7.23"), "{r}");
}

/// Signatures made by mail-auth (the library the gateway verifies with, as another
/// signer would use it): rsa-sha256 relaxed/relaxed and simple/simple pass; an expired one
/// (`x=` in the past) does not, and says so.
#[test]
fn signed_by_mail_auth_and_expired_signatures() {
    use mail_auth::common::crypto::{RsaKey, Sha256};
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::{Canonicalization, DkimSigner};
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;

    let w = world("");
    let pem = std::fs::read_to_string(&w.rsa).unwrap();
    let sign_with = |canon: Canonicalization, expiry: Option<u64>, body: &[u8]| {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("a PEM key");
        let key = RsaKey::<Sha256>::from_key_der(der).expect("the test key");
        let mut signer = DkimSigner::from_key(key)
            .domain("good.test")
            .selector("rsa")
            .headers(["From", "To", "Subject", "Date", "Message-ID"])
            .header_canonicalization(canon)
            .body_canonicalization(canon);
        if let Some(x) = expiry {
            signer = signer.expiration(x);
        }
        let sig = signer.sign(body).expect("mail-auth signs");
        let mut out = sig.to_header().into_bytes();
        out.extend_from_slice(body);
        out
    };
    let body = message("a@good.test", "Signed by mail-auth.\r\n\r\n");
    for (who, canon) in [
        ("mrel", Canonicalization::Relaxed),
        ("msim", Canonicalization::Simple),
    ] {
        let r = send(
            &w.gw,
            "a@good.test",
            &format!("{who}@example.test"),
            &sign_with(canon, None, &body),
        );
        assert!(r.starts_with("250"), "{r}");
        let ar = results(&w.gw.mailbox("example.test", who)[0]).join(" ");
        assert!(ar.contains("dkim=pass"), "{who}: {ar}");
    }
    // Expired: t= and x= moved to 2001 (expiry is judged before anything else, so the
    // edit itself is not what fails it).
    let signed =
        String::from_utf8(sign_with(Canonicalization::Relaxed, Some(3600), &body)).unwrap();
    let field = |tag: &str| {
        let at = signed.find(&format!("{tag}=")).expect("tag") + tag.len() + 1;
        let end = at + signed[at..].find(|c: char| !c.is_ascii_digit()).unwrap();
        signed[at..end].to_string()
    };
    let expired = signed
        .replacen(&format!("t={}", field("t")), "t=1000000000", 1)
        .replacen(&format!("x={}", field("x")), "x=1000003600", 1)
        .into_bytes();
    let r = send(&w.gw, "a@good.test", "mexp@example.test", &expired);
    assert!(r.starts_with("250"), "{r}");
    let ar = results(&w.gw.mailbox("example.test", "mexp")[0]).join(" ");
    assert!(!ar.contains("dkim=pass"), "{ar}");
    assert!(
        ar.contains("dkim=fail (signature expired (x=1000003600)"),
        "{ar}"
    );
}
