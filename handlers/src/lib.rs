//! Handlers built on the oomkit SDK.
