//! weir's gateway: a reverse proxy, and reusable tower layers, that enforce the
//! errors-and-rate-limits contract in front of any HTTP API.
//!
//! `weir serve --config FILE` runs [`server::Server`]; [`gateway`] documents the request
//! pipeline step by step; [`layer`] offers the request-id and rate-limit middleware on
//! their own for any axum app. Configuration: [`config`] and `docs/configuration.md`.

pub mod affinity;
pub mod balance;
pub mod body;
pub mod client_ip;
pub mod config;
mod deadline;
pub mod demo;
pub mod gateway;
pub mod h1;
pub mod hop;
pub mod idempotency;
pub mod identity;
pub mod layer;
mod outcomes;
mod present;
pub mod respond;
pub mod server;
pub mod tally;
mod telemetry;
pub mod upstream;
mod wire;

pub use config::{Config, ConfigError};
pub use gateway::{Gateway, GatewayError};
pub use server::Server;
