//! The `Plugin` trait and the glue that exports it.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

use crate::bindings::exports::mailgate::plugin::hooks::Guest;
use crate::{
    Config, DataOutcome, DeliverOutcome, DeliveryInfo, HeloInfo, HookSet, MailParams, Message,
    Outcome, PluginInfo, RcptOutcome, Recipient, ReversePath, SessionInfo, Transaction,
};

/// A mailgate plugin. Implement [`init`](Plugin::init) and the hooks you need; every hook
/// has a default that answers "continue" with no marks or edits (`on_deliver`: no routes).
///
/// The value `init` returns lives for one SMTP session: the host calls the session's hooks
/// on it, in order, and drops it when the session ends. Use `&mut self` for per-session
/// state.
///
/// Put [`#[plugin]`](crate::plugin) on the impl block to fill [`HOOKS`](Plugin::HOOKS)
/// with the hooks the block defines, then export the type with
/// [`export_plugin!`](crate::export_plugin).
pub trait Plugin: Sized + 'static {
    /// The hooks this plugin implements, reported in its manifest: the host instantiates
    /// the plugin only for these and skips it for the others. [`#[plugin]`](crate::plugin)
    /// computes it from the `on_*` methods of the impl block; without the attribute, list
    /// them by hand (`HookSet::RCPT_TO.union(HookSet::DATA)`). A hook left out is never
    /// called, even if it is implemented.
    const HOOKS: HookSet;

    /// Creates the plugin for one session from its `config` table (flattened: nested
    /// tables as dotted keys, arrays as JSON text; see [`Config`]). Also called once when
    /// the gateway loads the plugin, so an `Err` there refuses the plugin with this message
    /// before it takes traffic. [`ConfigError`](crate::ConfigError) converts into the
    /// `String` with `?`.
    ///
    /// The value lives for the session's hooks, unless the client pauses longer than the
    /// gateway's `chain.release_idle_instances_ms`: then the next hook runs on a value
    /// `init` made again. An instance serves sessions one after another, each with its own
    /// `init`; `static`s of the plugin's module persist from one session to the next (a
    /// place for caches, not for session state).
    fn init(config: &Config) -> Result<Self, String>;

    /// A client connected, before the greeting.
    fn on_connect(&mut self, session: &SessionInfo) -> Outcome {
        let _ = session;
        Outcome::continue_()
    }

    /// HELO or EHLO (again after STARTTLS, and on every new HELO/EHLO).
    fn on_helo(&mut self, session: &SessionInfo, helo: &HeloInfo) -> Outcome {
        let _ = (session, helo);
        Outcome::continue_()
    }

    /// MAIL FROM. `sender` is `None` for the null reverse-path `<>` (bounces).
    fn on_mail_from(
        &mut self,
        session: &SessionInfo,
        sender: Option<&crate::Address>,
        params: &MailParams,
    ) -> Outcome {
        let _ = (session, sender, params);
        Outcome::continue_()
    }

    /// One RCPT TO, after the gateway's own relay checks passed. `txn.recipients` holds the
    /// recipients accepted so far (not this one).
    fn on_rcpt_to(
        &mut self,
        session: &SessionInfo,
        txn: &Transaction,
        rcpt: &Recipient,
    ) -> RcptOutcome {
        let _ = (session, txn, rcpt);
        RcptOutcome::continue_()
    }

    /// The end of DATA/BDAT, before the reply. `msg` is the message, lent for this call:
    /// headers parsed by the host, the body read in chunks ([`Message::read_body`]).
    fn on_data(&mut self, session: &SessionInfo, txn: &Transaction, msg: &Message) -> DataOutcome {
        let _ = (session, txn, msg);
        DataOutcome::continue_()
    }

    /// Before a delivery attempt (on an instance of its own, outside the SMTP session),
    /// with the edits of `on_data` applied. Return routes for some or all recipients.
    fn on_deliver(
        &mut self,
        delivery: &DeliveryInfo,
        txn: &Transaction,
        msg: &Message,
    ) -> DeliverOutcome {
        let _ = (delivery, txn, msg);
        DeliverOutcome::none()
    }
}

/// Name and version for the manifest; implemented by `export_plugin!`.
#[doc(hidden)]
pub trait Meta {
    /// The plugin's name.
    const NAME: &'static str;
    /// The plugin's version.
    const VERSION: &'static str;
}

thread_local! {
    /// The plugin value of this instance, set by `init`. A component instance runs one
    /// plugin on one thread, so a single slot is enough.
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Implements the generated `Guest` trait for a [`Plugin`]; named by `export_plugin!`.
#[doc(hidden)]
pub struct Adapter<P, M>(PhantomData<(P, M)>);

impl<P, M> std::fmt::Debug for Adapter<P, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Adapter")
    }
}

fn with_plugin<P: Plugin, R>(f: impl FnOnce(&mut P) -> R) -> R {
    STATE.with_borrow_mut(|slot| {
        let plugin = slot
            .as_mut()
            .and_then(|b| b.downcast_mut::<P>())
            .expect("mailgate plugin: a hook was called before a successful `init`");
        f(plugin)
    })
}

impl<P: Plugin, M: Meta> Guest for Adapter<P, M> {
    fn manifest() -> PluginInfo {
        PluginInfo {
            name: M::NAME.to_string(),
            version: M::VERSION.to_string(),
            sdk: crate::SDK.to_string(),
            hooks: P::HOOKS,
        }
    }

    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let config = Config::new(config);
        // Drop any earlier value first, so it is never observable after a failed init.
        STATE.with_borrow_mut(|slot| *slot = None);
        let plugin = P::init(&config)?;
        STATE.with_borrow_mut(|slot| *slot = Some(Box::new(plugin)));
        Ok(())
    }

    fn on_connect(session: SessionInfo) -> Outcome {
        with_plugin(|p: &mut P| p.on_connect(&session))
    }

    fn on_helo(session: SessionInfo, helo: HeloInfo) -> Outcome {
        with_plugin(|p: &mut P| p.on_helo(&session, &helo))
    }

    fn on_mail_from(session: SessionInfo, sender: ReversePath, params: MailParams) -> Outcome {
        with_plugin(|p: &mut P| p.on_mail_from(&session, sender.as_ref(), &params))
    }

    fn on_rcpt_to(session: SessionInfo, txn: Transaction, rcpt: Recipient) -> RcptOutcome {
        with_plugin(|p: &mut P| p.on_rcpt_to(&session, &txn, &rcpt))
    }

    fn on_data(session: SessionInfo, txn: Transaction, msg: &Message) -> DataOutcome {
        with_plugin(|p: &mut P| p.on_data(&session, &txn, msg))
    }

    fn on_deliver(delivery: DeliveryInfo, txn: Transaction, msg: &Message) -> DeliverOutcome {
        with_plugin(|p: &mut P| p.on_deliver(&delivery, &txn, msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;
    use crate::{Address, ClientInfo, IpAddress, SocketAddress};

    struct Counter {
        seen: u32,
        block: String,
    }

    #[crate::plugin]
    impl Plugin for Counter {
        fn init(config: &Config) -> Result<Self, String> {
            if config.contains("fail") {
                return Err("bad config".into());
            }
            Ok(Counter {
                seen: 0,
                block: config.require("block")?.to_string(),
            })
        }

        fn on_rcpt_to(
            &mut self,
            _: &SessionInfo,
            _: &Transaction,
            rcpt: &Recipient,
        ) -> RcptOutcome {
            self.seen += 1;
            if rcpt.address.local_part == self.block {
                return RcptOutcome::reject(550, "5.7.1", format!("blocked after {}", self.seen));
            }
            RcptOutcome::continue_().with_reason(format!("seen {}", self.seen))
        }

        fn on_helo(&mut self, _: &SessionInfo, _: &HeloInfo) -> Outcome {
            Outcome::accept()
        }
    }

    struct Meta1;
    impl Meta for Meta1 {
        const NAME: &'static str = "counter";
        const VERSION: &'static str = "9.9.9";
    }

    type A = Adapter<Counter, Meta1>;

    fn session() -> SessionInfo {
        let sa = |a, port| SocketAddress {
            ip: IpAddress::Ipv4((127, 0, 0, a)),
            port,
        };
        SessionInfo {
            id: "s1".into(),
            client: ClientInfo {
                address: sa(1, 40000),
                local: sa(2, 25),
                listener: "mx".into(),
                ptr_name: None,
                trusted: false,
            },
            tls: None,
            helo: None,
            authenticated: None,
            score: 0.0,
            tags: vec![],
        }
    }

    fn txn() -> Transaction {
        Transaction {
            id: "s1.1".into(),
            sender: None,
            params: MailParams {
                size: None,
                body: crate::BodyType::SevenBit,
                smtputf8: false,
                other: vec![],
            },
            recipients: vec![],
        }
    }

    fn rcpt(local: &str) -> Recipient {
        Recipient {
            address: Address::new(local, "x.test"),
            params: vec![],
        }
    }

    #[test]
    fn attribute_lists_implemented_hooks() {
        assert_eq!(Counter::HOOKS, HookSet::RCPT_TO | HookSet::HELO);
        let info = A::manifest();
        assert_eq!(info.name, "counter");
        assert_eq!(info.version, "9.9.9");
        assert_eq!(info.sdk, crate::SDK);
        assert_eq!(info.hooks, HookSet::RCPT_TO | HookSet::HELO);
    }

    #[test]
    fn state_lives_across_hooks_and_resets_on_init() {
        let cfg = vec![("block".to_string(), "blocked".to_string())];
        A::init(cfg.clone()).unwrap();
        let out = A::on_rcpt_to(session(), txn(), rcpt("a"));
        assert_eq!(out.marks.reason.as_deref(), Some("seen 1"));
        let out = A::on_rcpt_to(session(), txn(), rcpt("blocked"));
        assert_eq!(out, RcptOutcome::reject(550, "5.7.1", "blocked after 2"));
        // Defaults for hooks the plugin does not implement.
        assert_eq!(A::on_connect(session()), Outcome::continue_());
        assert_eq!(
            A::on_mail_from(session(), None, txn().params),
            Outcome::continue_()
        );
        assert_eq!(
            A::on_helo(
                session(),
                HeloInfo {
                    name: "h".into(),
                    extended: true
                }
            ),
            Outcome::accept()
        );
        // A new init (a new session's instance) starts from scratch.
        A::init(cfg).unwrap();
        let out = A::on_rcpt_to(session(), txn(), rcpt("a"));
        assert_eq!(out.marks.reason.as_deref(), Some("seen 1"));
    }

    #[test]
    fn init_errors_are_reported() {
        assert_eq!(
            A::init(vec![]).unwrap_err(),
            "config key `block`: is required"
        );
        assert_eq!(
            A::init(vec![("fail".into(), "1".into())]).unwrap_err(),
            "bad config"
        );
    }

    #[test]
    #[should_panic(expected = "before a successful `init`")]
    fn hook_after_failed_init_panics() {
        let _ = A::init(vec![]);
        let _ = A::on_rcpt_to(session(), txn(), rcpt("a"));
    }

    struct Manual;
    impl Plugin for Manual {
        const HOOKS: HookSet = HookSet::DATA;
        fn init(_: &Config) -> Result<Self, String> {
            Ok(Manual)
        }
    }

    #[test]
    fn manual_hooks_and_default_bodies() {
        assert_eq!(Manual::HOOKS, HookSet::DATA);
        let mut m = Manual;
        assert_eq!(m.on_connect(&session()), Outcome::continue_());
        assert_eq!(
            m.on_rcpt_to(&session(), &txn(), &rcpt("a")),
            RcptOutcome::continue_()
        );
    }

    struct NoHooks;
    #[crate::plugin]
    impl Plugin for NoHooks {
        fn init(_: &Config) -> Result<Self, String> {
            Ok(NoHooks)
        }
    }

    #[test]
    fn attribute_with_no_hooks() {
        assert_eq!(NoHooks::HOOKS, HookSet::empty());
    }
}
