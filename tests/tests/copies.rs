//! How many copies of a message body the gateway holds, measured: the gateway runs
//! in this process under a counting global allocator, a real client (Python smtplib, in
//! its own process, so its memory is not counted) sends a 10 MiB message, and a plugin
//! (the `header-adder` fixture) adds a header at DATA, so the message goes through the
//! whole path: session, DATA hook (message resource), header edit, `Received:`, Maildir.
//!
//! The allocator tracks every allocation of 1 MiB or more (nothing but message bodies
//! is that large here): how many there were, their bytes, and how many were alive at
//! once. One body copy means at most one such buffer alive at any moment (the session's
//! buffer, grown by reallocation while DATA arrives, then shared read-only up to the
//! `250`). The figures are printed: `cargo test -p mailgate-tests --test copies --
//! --nocapture`.

// The counting allocator wraps the system allocator; that is the only unsafe code here.
#![allow(unsafe_code)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mailgate::config::Config;
use mailgate::dns::Resolver;
use mailgate::plugin::registry::{Services, load_all};
use mailgate::server::{self, Listeners};

/// Allocations at least this large are counted.
const LARGE: usize = 1 << 20;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

struct Counting;

fn grew(size: usize) {
    if size >= LARGE {
        let live = LIVE.fetch_add(1, Ordering::SeqCst) + 1;
        PEAK.fetch_max(live, Ordering::SeqCst);
        COUNT.fetch_add(1, Ordering::SeqCst);
        BYTES.fetch_add(size, Ordering::SeqCst);
    }
}

fn shrank(size: usize) {
    if size >= LARGE {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are
// atomics and allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // The old block is gone and the new one is the same buffer, grown: never two.
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn a_10_mib_message_through_a_header_plugin_is_held_once() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("mail");
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nwatch_interval_ms = 0\n\
         [delivery]\nmaildir = {:?}\n[admin]\nsocket = {:?}\nhttp = \"127.0.0.1:0\"\n[dns]\nreverse_lookup = false\n\
         [chain]\ncompile_cache = {:?}\n{}",
        maildir.display().to_string(),
        dir.path().join("admin.sock").display().to_string(),
        support::compile_cache().display().to_string(),
        support::plugin_toml("adder", "header-adder", ""),
    );
    let rt = Arc::new(Config::from_toml(&toml).unwrap().validate().unwrap());
    let mut body = b"From: a@client.test\r\nTo: big@example.test\r\nSubject: big\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz..\r\n";
    while body.len() < 10 << 20 {
        body.extend_from_slice(line);
    }
    let file = dir.path().join("big.eml");
    std::fs::write(&file, &body).unwrap();
    drop(body);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(async move {
        let dns = Arc::new(Resolver::new(rt.fixed.dns.clone()));
        let services = Services::with_cache(dns, rt.fixed.compile_cache.clone());
        let plugins = load_all(&rt.live.plugins, &services).await.unwrap();
        let listeners = Listeners::bind(&rt).await.unwrap();
        let port = listeners.addresses()[0].1.port();
        let ready = move || port_tx.send(port).unwrap();
        let stop = async move {
            let _ = stop_rx.await;
        };
        server::run(rt, listeners, plugins, services, None, ready, stop)
            .await
            .unwrap();
    });
    let port = port_rx
        .recv_timeout(support::READY)
        .expect("gateway ready")
        .to_string();

    // Only the transaction is measured: from here to the client's 250.
    PEAK.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
    let (live0, count0, bytes0) = (
        LIVE.load(Ordering::SeqCst),
        COUNT.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
    );
    let data = file.display().to_string();
    let out = support::json(&support::smtplib(&[
        "send",
        "127.0.0.1",
        &port,
        "--to",
        "big@example.test",
        "--data",
        &data,
    ]));
    let peak = PEAK.load(Ordering::SeqCst) - live0;
    let count = COUNT.load(Ordering::SeqCst) - count0;
    let mib = (BYTES.load(Ordering::SeqCst) - bytes0) as f64 / f64::from(1 << 20);
    let _ = stop_tx.send(());
    runtime.block_on(server).unwrap();
    assert_eq!(out["data"]["code"], 250, "{out}");

    eprintln!(
        "10 MiB message through header-adder: {count} allocations of >= 1 MiB \
         ({mib:.1} MiB, the session buffer's growth), at most {peak} alive at once"
    );
    let new = maildir.join("example.test/big/new");
    let stored = std::fs::read_dir(&new)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read(stored).unwrap();
    assert!(text.windows(22).any(|w| w == b"X-Fixture: header-adde"));
    assert!(text.len() > 10 << 20, "the whole body was delivered");
    assert!(
        count >= 1,
        "the body was held in a large buffer at least once"
    );
    assert_eq!(peak, 1, "one body copy in memory, not {peak}");
}
