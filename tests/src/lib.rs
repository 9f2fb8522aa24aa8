//! Support for the integration tests (placeholder).
