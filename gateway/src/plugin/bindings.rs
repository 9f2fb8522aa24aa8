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
