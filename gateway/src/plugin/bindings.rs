//! The one `bindgen!`: host-side types and traits generated from `wit/`. Generated types
//! are converted in `convert.rs` and go no further.

#![allow(missing_docs, missing_debug_implementations, unsafe_code, clippy::all)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "mailgate:plugin/message.message": super::message::MessageHandle,
        "mailgate:plugin/patterns.pattern-set": super::patterns::PatternSetHandle,
    },
});

use self::exports::mailgate::plugin::hooks::{
    DataOutcome, DeliverOutcome, DeliveryInfo, Outcome, PluginInfo, RcptOutcome,
};
use self::mailgate::plugin::types::{
    HeloInfo, MailParams, Recipient, ReversePath, SessionInfo, Transaction,
};
use wasmtime::component::{ComponentExportIndex, Func, Instance, InstancePre, Resource, TypedFunc};
use wasmtime::{AsContextMut, Result, format_err};

/// Where a plugin's hook functions are among its component's exports, found once per
/// loaded plugin.
///
/// bindgen's `PluginPre::instantiate_async` type-checks every export of every new
/// instance (a fifth of a session's instantiation cost); the types of a component do not
/// change between its instances, so the plugin's load checks them once, on its probe
/// instance, through bindgen ([`HookIndices::new`] takes that checked instance), and
/// sessions only look the functions up ([`HookIndices::load`]).
#[derive(Clone)]
pub struct HookIndices {
    manifest: ComponentExportIndex,
    init: ComponentExportIndex,
    on_connect: ComponentExportIndex,
    on_helo: ComponentExportIndex,
    on_mail_from: ComponentExportIndex,
    on_rcpt_to: ComponentExportIndex,
    on_data: ComponentExportIndex,
    on_deliver: ComponentExportIndex,
}

impl HookIndices {
    /// The indices of `pre`'s hook functions under its export `interface` (as the plugin
    /// names it, e.g. `mailgate:plugin/hooks@0.1.1`). `_checked` proves that bindgen
    /// type-checked an instance of this very component.
    pub fn new<T>(pre: &InstancePre<T>, interface: &str, _checked: &Plugin) -> Result<HookIndices> {
        let component = pre.component();
        let iface = component
            .get_export_index(None, interface)
            .ok_or_else(|| format_err!("no exported instance named `{interface}`"))?;
        let f = |name: &str| {
            component
                .get_export_index(Some(&iface), name)
                .ok_or_else(|| format_err!("`{interface}` does not export `{name}`"))
        };
        Ok(HookIndices {
            manifest: f("manifest")?,
            init: f("init")?,
            on_connect: f("on-connect")?,
            on_helo: f("on-helo")?,
            on_mail_from: f("on-mail-from")?,
            on_rcpt_to: f("on-rcpt-to")?,
            on_data: f("on-data")?,
            on_deliver: f("on-deliver")?,
        })
    }

    /// The hook functions of `instance`, an instance of the component these indices
    /// were found in.
    pub fn load(&self, mut store: impl AsContextMut, instance: &Instance) -> Result<Hooks> {
        let mut f = |i: &ComponentExportIndex| {
            instance
                .get_func(store.as_context_mut(), i)
                .ok_or_else(|| format_err!("hook export missing from the instance"))
        };
        Ok(Hooks {
            manifest: f(&self.manifest)?,
            init: f(&self.init)?,
            on_connect: f(&self.on_connect)?,
            on_helo: f(&self.on_helo)?,
            on_mail_from: f(&self.on_mail_from)?,
            on_rcpt_to: f(&self.on_rcpt_to)?,
            on_data: f(&self.on_data)?,
            on_deliver: f(&self.on_deliver)?,
        })
    }
}

/// The hook functions of one instance, called with the types bindgen generated.
#[derive(Clone, Copy)]
pub struct Hooks {
    manifest: Func,
    init: Func,
    on_connect: Func,
    on_helo: Func,
    on_mail_from: Func,
    on_rcpt_to: Func,
    on_data: Func,
    on_deliver: Func,
}

/// Calls `$func` with `$args` as a typed function of signature `$params -> $ret`.
macro_rules! typed_call {
    ($store:expr, $func:expr, $params:ty, $ret:ty, $args:expr) => {{
        // SAFETY: `$func` belongs to an instance of a component whose export of this name
        // bindgen type-checked against exactly this signature at the plugin's load
        // (`HookIndices::new` requires the checked `Plugin`); a component's types are the
        // same in all its instances.
        let typed = unsafe { TypedFunc::<$params, ($ret,)>::new_unchecked($func) };
        let (r,) = typed.call_async($store, $args).await?;
        Ok(r)
    }};
}

impl Hooks {
    /// `manifest`.
    pub async fn call_manifest<S: AsContextMut<Data: Send>>(&self, store: S) -> Result<PluginInfo> {
        typed_call!(store, self.manifest, (), PluginInfo, ())
    }

    /// `init`.
    pub async fn call_init<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        config: &[(String, String)],
    ) -> Result<std::result::Result<(), String>> {
        typed_call!(store, self.init, (&[(String, String)],), std::result::Result<(), String>, (config,))
    }

    /// `on-connect`.
    pub async fn call_on_connect<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        s: &SessionInfo,
    ) -> Result<Outcome> {
        typed_call!(store, self.on_connect, (&SessionInfo,), Outcome, (s,))
    }

    /// `on-helo`.
    pub async fn call_on_helo<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        s: &SessionInfo,
        h: &HeloInfo,
    ) -> Result<Outcome> {
        typed_call!(
            store,
            self.on_helo,
            (&SessionInfo, &HeloInfo),
            Outcome,
            (s, h)
        )
    }

    /// `on-mail-from`.
    pub async fn call_on_mail_from<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        s: &SessionInfo,
        a: &ReversePath,
        p: &MailParams,
    ) -> Result<Outcome> {
        typed_call!(
            store,
            self.on_mail_from,
            (&SessionInfo, &ReversePath, &MailParams),
            Outcome,
            (s, a, p)
        )
    }

    /// `on-rcpt-to`.
    pub async fn call_on_rcpt_to<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        s: &SessionInfo,
        t: &Transaction,
        r: &Recipient,
    ) -> Result<RcptOutcome> {
        typed_call!(
            store,
            self.on_rcpt_to,
            (&SessionInfo, &Transaction, &Recipient),
            RcptOutcome,
            (s, t, r)
        )
    }

    /// `on-data`.
    pub async fn call_on_data<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        s: &SessionInfo,
        t: &Transaction,
        m: Resource<super::message::MessageHandle>,
    ) -> Result<DataOutcome> {
        typed_call!(
            store,
            self.on_data,
            (
                &SessionInfo,
                &Transaction,
                Resource<super::message::MessageHandle>
            ),
            DataOutcome,
            (s, t, m)
        )
    }

    /// `on-deliver`.
    pub async fn call_on_deliver<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        d: &DeliveryInfo,
        t: &Transaction,
        m: Resource<super::message::MessageHandle>,
    ) -> Result<DeliverOutcome> {
        typed_call!(
            store,
            self.on_deliver,
            (
                &DeliveryInfo,
                &Transaction,
                Resource<super::message::MessageHandle>
            ),
            DeliverOutcome,
            (d, t, m)
        )
    }
}
