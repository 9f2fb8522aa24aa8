//! Fuzz target `session`: the SMTP session state machine (`smtp::Session`), driven the way
//! the connection driver drives it, with the client's bytes coming from the fuzzer.
//!
//! Input: a 13-octet header, then the chunk lengths, then the client's byte stream.
//!
//! | octet | meaning |
//! |-------|---------|
//! | 0     | flags: 1 STARTTLS offered, 2 trusted client (may relay), 4 local parts case-sensitive, 8 implicit TLS (smtps listener), 16 the connect hook refuses, 32 no local domains, 64 every second delivery fails with 451, 128 the chunked run does not pipeline before EHLO |
//! | 1     | limits, two bits each from bit 0: max_command_line {512, 80, 40, 1000}, max_text_line {1000, 78, 12, 4}, max_message_size {25 MiB, 2000, 100, 10}, max_errors {20, 5, 2, 1000} |
//! | 2     | limits, two bits each from bit 0: max_recipients {100, 3, 1, 0}, max_recipient_overshoot {1000, 2, 0, 5}, max_hops {50, 1, 0, 3}, max_junk_commands {100, 3, 1, 0} |
//! | 3..11 | hook answers, little-endian u64, two bits per hook (the n-th hook after Connect uses bits 2(n mod 32)): 0 and 1 continue, 2 refuses with `550 5.7.1 no`, 3 accepts with `250 2.0.0 policy ok` |
//! | 11    | the n-th hook after Connect (1-based) disconnects with `554 5.7.1`; 0: none |
//! | 12    | n = low four bits: the next n octets are chunk lengths (each octet + 1), used in turn; n = 0: one chunk |
//!
//! The rest is what the client sends (`seeds.py` writes inputs in this layout). The driver
//! feeds a piece of it whenever the session asks for input (`Step::NeedInput`),
//! `feed_eof()` when the stream is used up, answers hooks as above, every delivery with
//! `Continue` (or `451` for every second one with flag 64), a STARTTLS with
//! `tls_established()`, and stops at `Step::Close`. Every loop is bounded: a session that
//! does not close within the step budget is a failure.
//!
//! Each input runs three times, fed in different pieces: one octet at a time (the
//! reference), pipelined as far as a client may (before EHLO one line at a time, after it
//! everything up to the next STARTTLS line), and in the input's chunk lengths. The chunked
//! run also spills: after every piece it takes the content the session holds
//! (`take_content()`) into a "file" in memory, answers `Step::Seal` with it, and so reads
//! every message back from there; its deliveries must be the same octets.
//!
//! Invariants on every run:
//! - every `Step::Send` is a sequence of complete, well-formed replies (`check::reply_stream`);
//! - a message, at the DATA hook and at `Step::Deliver`, has CRLF lines only (no bare CR
//!   or LF), is empty or ends in CRLF, has no line over `max_text_line`, is within
//!   `max_message_size` and has at most `max_hops` `Received:` fields;
//! - a `Step::Deliver` comes right after a DATA hook that accepted, carries that very
//!   text, the sender of the last accepted MAIL hook and the recipients accepted since, in
//!   order, distinct, at most `max_recipients`; and a `Step::Deliver` closes the
//!   transaction: another one needs another accepted MAIL (so one DATA/BDAT never
//!   delivers twice), as does a refused message (`take_refused()`);
//! - `Step::StartTls` only when offered and TLS is not on yet; `Step::NeedInput` never
//!   after EOF; after `Step::Close`, `step()` says `Close` again.
//!
//! Determinism: the pipelined and the chunked run must send the client the same bytes
//! and see the same hooks, deliveries and refusals as the reference, with two exceptions
//! that are protocol rules, not bugs; a run is compared up to the first of them:
//! - before EHLO the client may not pipeline: a command line followed by more buffered
//!   input is refused with `554 5.5.0 Improper command pipelining` and the buffer dropped
//!   (`command_step`), so that reply depends on how the bytes arrive. (Fed all at once, a
//!   whole session ends at its EHLO this way, hence the pipelined run's line-at-a-time
//!   start.) The reference never has input buffered behind a command line;
//! - whatever is buffered behind STARTTLS is discarded (CVE-2011-0411). A run is compared
//!   past a `StartTls` when it had fed exactly as much of the stream as the reference by
//!   then (nothing was discarded), and up to it otherwise.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mailgate_fuzz::check;
use mailgate_fuzz::smtp::address::mailbox_key;
use mailgate_fuzz::smtp::{
    Backing, Envelope, Hook, Listener, Message, MessageText, Reply, Resolution, Session,
    SessionConfig, SessionFacts, Step, TlsInfo,
};

/// A spill file in memory.
#[derive(Debug)]
struct SpillFile(Vec<u8>);

impl Backing for SpillFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
}

const HEADER: usize = 13;

/// The session's settings, the hook answers and the client's bytes, from one input.
struct Plan<'a> {
    cfg: Arc<SessionConfig>,
    facts: SessionFacts,
    refuse_connect: bool,
    fail_deliveries: bool,
    polite: bool,
    answers: u64,
    disconnect_at: usize,
    chunk_lens: Vec<usize>,
    stream: &'a [u8],
}

fn pick<T: Copy>(table: [T; 4], bits: u8) -> T {
    table[usize::from(bits & 3)]
}

fn tls_info() -> TlsInfo {
    TlsInfo {
        version: "TLSv1_3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
    }
}

impl<'a> Plan<'a> {
    fn parse(data: &'a [u8]) -> Option<Plan<'a>> {
        if data.len() < HEADER {
            return None;
        }
        let (flags, a, b) = (data[0], data[1], data[2]);
        let answers = u64::from_le_bytes(data[3..11].try_into().unwrap());
        let disconnect_at = usize::from(data[11]);
        let rest = &data[HEADER..];
        let n = usize::from(data[12] & 15).min(rest.len());
        let chunk_lens = rest[..n].iter().map(|&l| usize::from(l) + 1).collect();
        #[allow(clippy::needless_update)]
        let cfg = SessionConfig {
            hostname: "mx.test".into(),
            max_command_line: pick([512, 80, 40, 1000], a),
            max_text_line: pick([1000, 78, 12, 4], a >> 2),
            max_message_size: pick([25 << 20, 2000, 100, 10], a >> 4),
            max_errors: pick([20, 5, 2, 1000], a >> 6),
            max_recipients: pick([100, 3, 1, 0], b),
            max_recipient_overshoot: pick([1000, 2, 0, 5], b >> 2),
            max_hops: pick([50, 1, 0, 3], b >> 4),
            max_junk_commands: pick([100, 3, 1, 0], b >> 6),
            starttls: flags & 1 != 0,
            fold_local_part: flags & 4 == 0,
            local_domains: if flags & 32 == 0 {
                vec!["example.test".into(), "xn--bcher-kva.test".into()]
            } else {
                Vec::new()
            },
            // Settings added later keep their defaults until this target sets them.
            ..SessionConfig::default()
        };
        let implicit_tls = flags & 8 != 0;
        let listener = if implicit_tls {
            Listener::Smtps
        } else {
            Listener::Smtp
        };
        let facts = SessionFacts {
            trusted: flags & 2 != 0,
            tls: implicit_tls.then(tls_info),
            ..SessionFacts::new(
                "F1".into(),
                "192.0.2.9:4321".parse().unwrap(),
                "192.0.2.1:25".parse().unwrap(),
                listener,
            )
        };
        Some(Plan {
            cfg: Arc::new(cfg),
            facts,
            refuse_connect: flags & 16 != 0,
            fail_deliveries: flags & 64 != 0,
            polite: flags & 128 != 0,
            answers,
            disconnect_at,
            chunk_lens,
            stream: &rest[n..],
        })
    }

    /// The answer to the `ordinal`-th hook after Connect (1-based).
    fn answer(&self, ordinal: usize) -> Resolution {
        if ordinal == self.disconnect_at {
            return Resolution::Disconnect(Reply::new(554, "5.7.1", "go away"));
        }
        match (self.answers >> (2 * (ordinal % 32))) & 3 {
            2 => Resolution::Reply(Reply::new(550, "5.7.1", "no")),
            3 => Resolution::Reply(Reply::new(250, "2.0.0", "policy ok")),
            _ => Resolution::Continue,
        }
    }
}

/// How a run cuts the stream into the pieces it feeds.
#[derive(Clone, Copy, Debug)]
enum Feed {
    /// One octet per `NeedInput`: the reference run. Nothing is ever buffered behind a
    /// command line, so neither exception (see the module docs) applies to it.
    Bytewise,
    /// Like a client that pipelines as much as RFC 2920 and RFC 3207 allow: before EHLO
    /// one line per `NeedInput`, after it everything up to the end of the next line
    /// starting with STARTTLS, or to the end.
    Pipelined,
    /// The chunk lengths of the input, in turn (with flag 128 never past the end of a
    /// line before EHLO).
    Chunks,
}

/// Hands out the next piece of the stream.
struct Feeder<'a, 'p> {
    plan: &'p Plan<'a>,
    how: Feed,
    rest: &'a [u8],
    fed: usize,
    chunk: usize,
}

impl<'a> Feeder<'a, '_> {
    fn next(&mut self, esmtp: bool) -> Option<&'a [u8]> {
        let rest = self.rest;
        if rest.is_empty() {
            return None;
        }
        let line_end = |from: usize| {
            rest[from..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| from + i + 1)
        };
        let mut n = match self.how {
            Feed::Bytewise => 1,
            Feed::Pipelined if !esmtp => line_end(0),
            Feed::Pipelined => {
                let mut at = 0;
                loop {
                    let end = line_end(at);
                    let line = &rest[at..end];
                    if end == rest.len()
                        || (line.len() >= 8 && line[..8].eq_ignore_ascii_case(b"STARTTLS"))
                    {
                        break end;
                    }
                    at = end;
                }
            }
            Feed::Chunks => {
                let lens = &self.plan.chunk_lens;
                let n = lens.get(self.chunk % lens.len().max(1)).copied();
                self.chunk += 1;
                let n = n.unwrap_or(rest.len());
                if self.plan.polite && !esmtp {
                    n.min(line_end(0))
                } else {
                    n
                }
            }
        };
        n = n.min(rest.len());
        self.rest = &rest[n..];
        self.fed += n;
        Some(&rest[..n])
    }
}

/// What a run saw besides the bytes sent, in order.
#[derive(Debug, PartialEq)]
enum Event {
    Hook(Hook),
    Deliver(Box<Message>),
    Refused(Envelope, Reply),
    StartTls,
    Close,
}

#[derive(Debug, Default)]
struct Run {
    /// Everything sent to the client.
    sent: Vec<u8>,
    /// The events, each with `sent.len()` when it happened.
    events: Vec<(usize, Event)>,
    /// For each `StartTls`, the octets of the stream fed by then.
    tls_fed: Vec<usize>,
}

/// `Received:` fields in the header section of a message (as the session counts them).
fn received_fields(text: &[u8]) -> usize {
    text.split(|&b| b == b'\n')
        .take_while(|l| !l.is_empty() && *l != b"\r")
        .filter(|l| l.len() >= 9 && l[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// The checks on a message's text (at the DATA hook and at delivery).
fn check_text(cfg: &SessionConfig, text: &[u8]) {
    if let Err(e) = check::message_text(text, cfg.max_text_line) {
        panic!("message text: {e}: {:?}", String::from_utf8_lossy(text));
    }
    assert!(
        text.len() <= cfg.max_message_size,
        "message of {} octets over max_message_size {}",
        text.len(),
        cfg.max_message_size
    );
    let hops = received_fields(text);
    assert!(hops <= cfg.max_hops, "{hops} Received: fields passed");
}

/// One session over `plan`'s stream fed as `feed` says, checking every step.
fn run(plan: &Plan<'_>, feed: Feed) -> Run {
    let cfg = &*plan.cfg;
    let mut s = Session::new(plan.cfg.clone(), plan.facts.clone());
    let mut input = Feeder {
        plan,
        how: feed,
        rest: plan.stream,
        fed: 0,
        chunk: 0,
    };
    let mut eof = false;
    let mut out = Run::default();
    let mut hooks = 0usize;
    let mut deliveries = 0usize;
    let mut tls = plan.facts.tls.is_some();
    // The open transaction as the hooks showed it: the accepted sender, the recipients
    // accepted since, and the text the DATA hook accepted (until its Deliver).
    let mut mail: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    let mut accepted_text: Option<Vec<u8>> = None;
    let spills = matches!(feed, Feed::Chunks);
    let mut file: Vec<u8> = Vec::new();

    let budget = 100_000 + 16 * plan.stream.len();
    for _ in 0..budget {
        let step = s.step();
        if accepted_text.is_some() {
            assert!(
                matches!(step, Step::Deliver(_)),
                "the DATA hook accepted, then {step:?} instead of Deliver"
            );
        }
        match step {
            Step::Send(bytes) => {
                if let Err(e) = check::reply_stream(&bytes) {
                    panic!("Step::Send {:?}: {e}", String::from_utf8_lossy(&bytes));
                }
                out.sent.extend_from_slice(&bytes);
            }
            Step::NeedInput => {
                assert!(!eof, "NeedInput after EOF");
                if s.spilled() == 0 {
                    // The message the file was for ended (refused, reset, delivered).
                    file.clear();
                }
                match input.next(s.facts().esmtp()) {
                    Some(piece) => s.feed(piece),
                    None => {
                        s.feed_eof();
                        eof = true;
                    }
                }
                if spills {
                    file.extend(s.take_content());
                    assert_eq!(file.len(), s.spilled(), "spilled octets");
                }
            }
            Step::Hook(hook) => {
                let resolution = if hook == Hook::Connect {
                    if plan.refuse_connect {
                        Resolution::Reply(Reply::new(554, "5.7.1", "no"))
                    } else {
                        Resolution::Continue
                    }
                } else {
                    hooks += 1;
                    plan.answer(hooks)
                };
                let accepted = match &resolution {
                    Resolution::Continue => true,
                    Resolution::Reply(r) => r.is_positive(),
                    Resolution::Disconnect(_) => false,
                };
                match &hook {
                    Hook::Connect => {}
                    Hook::Helo { .. } => {
                        // HELO/EHLO resets the transaction, whatever the hook says.
                        mail = None;
                        rcpts.clear();
                    }
                    Hook::MailFrom { address, .. } => {
                        // Only asked with no transaction open.
                        rcpts.clear();
                        mail = accepted.then(|| address.clone());
                    }
                    Hook::RcptTo { address } => {
                        assert!(mail.is_some(), "RCPT hook without an accepted MAIL");
                        if accepted {
                            rcpts.push(address.clone());
                        }
                    }
                    Hook::Data => {
                        let text = s
                            .message()
                            .expect("message() at the DATA hook")
                            .to_vec()
                            .expect("readable");
                        check_text(cfg, &text);
                        let env = s.envelope();
                        assert_eq!(Some(&env.mail_from), mail.as_ref(), "DATA hook sender");
                        assert_eq!(env.rcpt_to, rcpts, "DATA hook recipients");
                        assert!(!rcpts.is_empty(), "DATA hook without recipients");
                        if accepted {
                            accepted_text = Some(text);
                        }
                    }
                }
                out.events.push((out.sent.len(), Event::Hook(hook)));
                s.resolve(resolution);
            }
            Step::Seal(tail) => {
                assert!(spills, "Seal though nothing was taken");
                file.extend(tail);
                assert_eq!(file.len(), s.spilled(), "sealed octets");
                s.sealed(Arc::new(SpillFile(std::mem::take(&mut file))));
            }
            Step::Deliver(mut message) => {
                let text = accepted_text
                    .take()
                    .expect("Deliver without an accepted DATA hook");
                let delivered = message.text.to_vec().expect("readable");
                // Runs compare messages by their octets, not where they are kept.
                message.text = MessageText::new(delivered.clone());
                assert_eq!(delivered, text, "Deliver carries another text than DATA's");
                check_text(cfg, &delivered);
                let from = mail
                    .take()
                    .expect("Deliver without an accepted MAIL since the last one");
                let env = &message.envelope;
                assert_eq!(env.mail_from, from, "delivered sender");
                assert_eq!(
                    env.rcpt_to,
                    std::mem::take(&mut rcpts),
                    "delivered recipients"
                );
                assert!(!env.rcpt_to.is_empty() && env.rcpt_to.len() <= cfg.max_recipients);
                let mut keys: Vec<String> = env
                    .rcpt_to
                    .iter()
                    .map(|r| mailbox_key(r, cfg.fold_local_part))
                    .collect();
                keys.sort();
                keys.dedup();
                assert_eq!(
                    keys.len(),
                    env.rcpt_to.len(),
                    "duplicate recipients delivered"
                );
                deliveries += 1;
                assert_eq!(message.id, format!("F1.{deliveries}"));
                let resolution = if plan.fail_deliveries && deliveries.is_multiple_of(2) {
                    Resolution::Reply(Reply::new(451, "4.3.0", "try again later"))
                } else {
                    Resolution::Continue
                };
                out.events.push((out.sent.len(), Event::Deliver(message)));
                s.resolve(resolution);
            }
            Step::StartTls => {
                assert!(cfg.starttls, "StartTls though not offered");
                assert!(!tls, "StartTls with TLS on already");
                tls = true;
                mail = None;
                rcpts.clear();
                out.events.push((out.sent.len(), Event::StartTls));
                out.tls_fed.push(input.fed);
                s.tls_established(tls_info());
            }
            Step::Close => {
                out.events.push((out.sent.len(), Event::Close));
                assert!(matches!(s.step(), Step::Close), "step() after Close");
                return out;
            }
        }
        if let Some(r) = s.take_refused() {
            assert!(!r.reply.is_positive(), "refused with {}", r.reply);
            assert!(
                accepted_text.is_none(),
                "refused after the DATA hook accepted"
            );
            mail = None;
            rcpts.clear();
            out.events
                .push((out.sent.len(), Event::Refused(r.envelope, r.reply)));
        }
    }
    panic!("session did not close within {budget} steps");
}

/// Where `run` stops being comparable with the byte-by-byte `reference` (see the module
/// docs): the octets sent and the events before the first pipelining refusal, or up to
/// the first `StartTls` that discarded input (when more of the stream had been fed by
/// then than in the reference, which never has anything buffered at STARTTLS).
fn cut(run: &Run, reference: &Run) -> Option<(usize, usize)> {
    const PIPELINING: &[u8] = b"554 5.5.0 Improper command pipelining";
    let pipelining = run
        .sent
        .windows(PIPELINING.len())
        .enumerate()
        .find(|&(i, w)| w == PIPELINING && (i == 0 || run.sent[i - 1] == b'\n'))
        .map(|(p, _)| (p, run.events.partition_point(|(at, _)| *at <= p)));
    let discarded = run
        .tls_fed
        .iter()
        .zip(
            reference
                .tls_fed
                .iter()
                .map(Some)
                .chain(std::iter::repeat(None)),
        )
        .position(|(fed, r)| Some(fed) != r)
        .and_then(|k| {
            let i = run
                .events
                .iter()
                .enumerate()
                .filter(|(_, (_, e))| *e == Event::StartTls)
                .nth(k)?
                .0;
            Some((run.events[i].0, i + 1))
        });
    match (pipelining, discarded) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// `run` agrees with `reference` up to its cut, or entirely if it has none.
fn same(reference: &Run, run: &Run, how: &str) {
    fn events(r: &Run, n: usize) -> Vec<&Event> {
        r.events.iter().take(n).map(|(_, e)| e).collect()
    }
    let fail = |what: &str| -> ! {
        panic!(
            "{what} differ fed {how}:\nbyte by byte: {:?}\n{how}: {:?}\nbyte by byte: {:?}\n{how}: {:?}",
            String::from_utf8_lossy(&reference.sent),
            String::from_utf8_lossy(&run.sent),
            events(reference, usize::MAX),
            events(run, usize::MAX),
        )
    };
    match cut(run, reference) {
        None => {
            if run.sent != reference.sent {
                fail("replies");
            }
            if events(run, usize::MAX) != events(reference, usize::MAX) {
                fail("events");
            }
        }
        Some((sent, n)) => {
            let upto = sent.min(reference.sent.len());
            if run.sent[..sent] != reference.sent[..upto] {
                fail("replies");
            }
            if events(run, n) != events(reference, n) {
                fail("events");
            }
        }
    }
}

/// `MAILGATE_FUZZ_TRACE=1`: print the all-at-once run (for reading a reproducer or a
/// seed: `target/.../session <file>` runs one input).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("MAILGATE_FUZZ_TRACE").is_some())
}

fuzz_target!(|data: &[u8]| {
    let Some(plan) = Plan::parse(data) else {
        return;
    };
    let reference = run(&plan, Feed::Bytewise);
    if trace() {
        eprintln!(
            "--- sent (byte by byte):\n{}",
            String::from_utf8_lossy(&reference.sent)
        );
        for (at, e) in &reference.events {
            eprintln!("--- at {at}: {e:?}");
        }
    }
    let pipelined = run(&plan, Feed::Pipelined);
    same(&reference, &pipelined, "pipelined");
    let chunked = run(&plan, Feed::Chunks);
    same(&reference, &chunked, "in chunks");
});
