//! Password authentication logic, free of I/O: SCRAM-SHA-256 and MD5 in both directions,
//! clients logging in to the pooler and the pooler logging in to PostgreSQL.
//!
//! Stored credentials are [`Secret`]s; [`ScramServer`] and [`md5::verify`] check clients,
//! [`ScramClient`] and [`md5::salted_response`] answer the server's challenges, and
//! [`verify_plain`] serves `auth_type = plain`, [`hba`] reads `auth_hba_file` for
//! `auth_type = hba`, [`lookup`] reads and caches `auth_query` answers, [`rotation`] keeps replaced secrets for their grace, [`token`] judges ServiceAccount tokens, [`sigv4`] signs RDS IAM tokens and [`cloud`] reads
//! the cloud token endpoints' answers and says when a token is due for renewal. The protocol layer moves the bytes.

pub mod cloud;
mod crypto;
mod error;
pub mod hba;
pub mod lookup;
pub mod md5;
pub mod rotation;
mod scram;
mod secret;
pub mod sigv4;
pub mod token;

pub use error::AuthError;
pub use scram::{ChannelBinding, ScramClient, ScramCredential, ScramServer};
pub use secret::{verify_plain, ScramSecret, Secret};
