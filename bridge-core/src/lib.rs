//! The bridge's domain, free of Kubernetes: what a bridge is configured
//! with and every rule that configuration must pass.
//!
//! - the configuration types ([`mqtt`], [`kafka`], [`route`], [`secret`],
//!   [`config`]), generic over how a secret is named: a Kubernetes Secret key
//!   in a custom resource, a file or environment variable in bridge-runtime's
//!   file — the same Rust types, so the operator and the runtime cannot drift;
//! - [`rules`]: the patterns, limits, property lists and shared constants;
//! - [`validate`]: the one check of a configuration, run by the operator on a
//!   custom resource and by bridge-runtime on its file; the CRD schema is
//!   built from the same [`rules`];
//! - [`topic`], [`json_field`], [`routes`]: topic filters and templates and
//!   the compiled route table (what goes where), pure logic;
//! - [`report`]: what a running bridge tells the operator about itself.
//!
//! The `crds` crate adds the Kubernetes custom resource around these types.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod json_field;
pub mod kafka;
pub mod mqtt;
pub mod report;
pub mod route;
pub mod routes;
pub mod rules;
pub mod secret;
pub mod tls;
pub mod topic;
pub mod validate;

pub use config::*;
pub use error::SpecError;
pub use kafka::*;
pub use mqtt::*;
pub use route::*;
pub use secret::*;
pub use tls::Tls;
