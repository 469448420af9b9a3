//! The operator side of the broker: the admin HTTP/JSON API and the `tern` subcommands that
//! inspect and change a broker, running or stopped.
//!
//! - [`model`]: the views operators see (retained messages, sessions, queues, users, groups,
//!   inboxes) as pure functions over a [`Store`](tern_storage::Store), shared by both paths;
//! - [`http`]: the API a running broker serves (axum; bearer token; `docs/admin-api.md`);
//! - `access_api`: token revocations and reloading the token keys and the ACL file;
//! - `backup_api`: a consistent copy of the live database;
//! - `push_api`: app servers pushing messages to users, groups, topics and broadcasts;
//! - [`token`]: the token and the `admin.token`/`admin.addr` files the CLI finds it by;
//! - [`client`]: a blocking client of the API;
//! - [`command`]: the subcommands: live through the API, or offline on the data directory;
//! - [`render`]: their human-readable tables.

mod access_api;
mod backup_api;
mod chat_api;
pub mod client;
pub mod command;
pub mod http;
pub mod model;
mod push_api;
pub mod render;
pub mod token;
