//! `spec.tls` in the pods: the certificate Secrets and CA ConfigMaps mounted as files, and
//! the `client_tls_*` / `server_tls_*` settings pointing at them.
//!
//! Every source is mounted as a whole directory, never with subPath: the kubelet swaps the
//! files of such mounts in place when the Secret or ConfigMap changes (subPath mounts never
//! see an update), and the pooler watches its certificate files, so a renewed certificate
//! reaches running pods without a restart. The paths are fixed, so rotated contents change
//! nothing in the pod template.

use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, SecretVolumeSource, Volume, VolumeMount};

use super::{Observed, RenderError};
use crate::api::{CaSource, ConnectionPoolSpec, SslMode};

/// The poolers' own certificate (a kubernetes.io/tls Secret).
pub const CLIENT_DIR: &str = "/etc/weir/tls/client";
/// The CA client certificates are checked against.
pub const CLIENT_CA_DIR: &str = "/etc/weir/tls/client-ca";
/// The CA the database's certificate is checked against.
pub const SERVER_CA_DIR: &str = "/etc/weir/tls/server-ca";
/// The certificate the poolers present to the database (a kubernetes.io/tls Secret).
pub const SERVER_CLIENT_DIR: &str = "/etc/weir/tls/server-client";
/// Certificate key of a kubernetes.io/tls Secret.
pub const TLS_CERT: &str = "tls.crt";
/// Private key key of a kubernetes.io/tls Secret.
pub const TLS_KEY: &str = "tls.key";

/// Where a mounted source comes from.
enum Source<'a> {
    Secret(&'a str),
    ConfigMap(&'a str),
}

/// One mounted source: volume name, mount path, where from, and the keys it must hold.
struct Mount<'a> {
    volume: &'static str,
    dir: &'static str,
    source: Source<'a>,
    keys: Vec<&'a str>,
}

/// A CA reference as a mount at `dir`.
fn ca_mount<'a>(volume: &'static str, dir: &'static str, ca: &'a CaSource) -> Option<Mount<'a>> {
    let (source, selector) = match (&ca.secret, &ca.config_map) {
        (Some(s), _) => (Source::Secret(s.name.as_str()), s),
        (None, Some(c)) => (Source::ConfigMap(c.name.as_str()), c),
        (None, None) => return None,
    };
    Some(Mount {
        volume,
        dir,
        source,
        keys: vec![selector.key.as_str()],
    })
}

/// A kubernetes.io/tls Secret as a mount at `dir`.
fn key_pair<'a>(volume: &'static str, dir: &'static str, secret: &'a str) -> Mount<'a> {
    Mount {
        volume,
        dir,
        source: Source::Secret(secret),
        keys: vec![TLS_CERT, TLS_KEY],
    }
}

/// Every TLS source the spec names, in a fixed order.
fn mounts(spec: &ConnectionPoolSpec) -> Vec<Mount<'_>> {
    let Some(tls) = &spec.tls else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(client) = &tls.client {
        if let Some(secret) = &client.secret_name {
            out.push(key_pair("tls-client", CLIENT_DIR, secret.as_str()));
        }
        out.extend(
            client
                .ca
                .as_ref()
                .and_then(|ca| ca_mount("tls-client-ca", CLIENT_CA_DIR, ca)),
        );
    }
    if let Some(server) = &tls.server {
        out.extend(
            server
                .ca
                .as_ref()
                .and_then(|ca| ca_mount("tls-server-ca", SERVER_CA_DIR, ca)),
        );
        if let Some(secret) = &server.client_certificate_secret_name {
            out.push(key_pair(
                "tls-server-client",
                SERVER_CLIENT_DIR,
                secret.as_str(),
            ));
        }
    }
    out
}

/// The `[pgbouncer]` TLS settings, in PgBouncer's names; empty without `spec.tls`.
pub(crate) fn settings(spec: &ConnectionPoolSpec) -> Vec<(&'static str, String)> {
    let Some(tls) = &spec.tls else {
        return Vec::new();
    };
    let file = |dir: &str, key: &str| format!("{dir}/{key}");
    let ca_file = |dir: &str, ca: &Option<CaSource>| {
        ca.as_ref()
            .and_then(CaSource::selector)
            .map(|s| file(dir, &s.key))
    };
    let mut out = Vec::new();
    if let Some(client) = &tls.client {
        out.push((
            "client_tls_sslmode",
            client.effective_mode().as_str().to_owned(),
        ));
        if client.secret_name.is_some() {
            out.push(("client_tls_cert_file", file(CLIENT_DIR, TLS_CERT)));
            out.push(("client_tls_key_file", file(CLIENT_DIR, TLS_KEY)));
        }
        if let Some(ca) = ca_file(CLIENT_CA_DIR, &client.ca) {
            out.push(("client_tls_ca_file", ca));
        }
    }
    if let Some(server) = &tls.server {
        out.push((
            "server_tls_sslmode",
            server.effective_mode().as_str().to_owned(),
        ));
        if let Some(ca) = ca_file(SERVER_CA_DIR, &server.ca) {
            out.push(("server_tls_ca_file", ca));
        }
        if server.client_certificate_secret_name.is_some() {
            out.push(("server_tls_cert_file", file(SERVER_CLIENT_DIR, TLS_CERT)));
            out.push(("server_tls_key_file", file(SERVER_CLIENT_DIR, TLS_KEY)));
        }
    }
    out
}

/// The volumes of the TLS sources.
pub(crate) fn volumes(spec: &ConnectionPoolSpec) -> Vec<Volume> {
    mounts(spec)
        .into_iter()
        .map(|m| match m.source {
            Source::Secret(name) => Volume {
                name: m.volume.to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(name.to_owned()),
                    // Readable by the pooler's group only: it holds private keys.
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            Source::ConfigMap(name) => Volume {
                name: m.volume.to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: name.to_owned(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
        })
        .collect()
}

/// The pooler container's read-only mounts of the TLS sources.
pub(crate) fn volume_mounts(spec: &ConnectionPoolSpec) -> Vec<VolumeMount> {
    mounts(spec)
        .into_iter()
        .map(|m| VolumeMount {
            name: m.volume.to_owned(),
            mount_path: m.dir.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        })
        .collect()
}

/// Checks that every TLS Secret and ConfigMap exists with the keys the pods will read:
/// a missing one would leave new pods stuck before their container starts.
pub(crate) fn check_sources(
    spec: &ConnectionPoolSpec,
    observed: &Observed,
) -> Result<(), RenderError> {
    for m in mounts(spec) {
        match m.source {
            Source::Secret(name) => {
                let data = observed
                    .secrets
                    .get(name)
                    .ok_or_else(|| RenderError::MissingSecret(name.to_owned()))?;
                if let Some(key) = m.keys.iter().find(|k| !data.contains_key(**k)) {
                    return Err(RenderError::MissingSecretKey {
                        secret: name.to_owned(),
                        key: (*key).to_owned(),
                    });
                }
            }
            Source::ConfigMap(name) => {
                let data = observed
                    .config_maps
                    .get(name)
                    .ok_or_else(|| RenderError::MissingConfigMap(name.to_owned()))?;
                if let Some(key) = m.keys.iter().find(|k| !data.contains_key(**k)) {
                    return Err(RenderError::MissingConfigMapKey {
                        config_map: name.to_owned(),
                        key: (*key).to_owned(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// The `(Secret, key)` pairs the TLS settings read.
pub fn secret_keys(spec: &ConnectionPoolSpec) -> Vec<(String, String)> {
    keys(spec, |source| match source {
        Source::Secret(name) => Some(name),
        Source::ConfigMap(_) => None,
    })
}

/// The `(ConfigMap, key)` pairs the TLS settings read.
pub fn config_map_keys(spec: &ConnectionPoolSpec) -> Vec<(String, String)> {
    keys(spec, |source| match source {
        Source::ConfigMap(name) => Some(name),
        Source::Secret(_) => None,
    })
}

fn keys<'a>(
    spec: &'a ConnectionPoolSpec,
    pick: impl Fn(&Source<'a>) -> Option<&'a str>,
) -> Vec<(String, String)> {
    mounts(spec)
        .iter()
        .filter_map(|m| Some((pick(&m.source)?, &m.keys)))
        .flat_map(|(name, keys)| keys.iter().map(move |k| (name.to_owned(), (*k).to_owned())))
        .collect()
}

/// The sslmode written into the app Secret's URIs: `require` when the poolers present a
/// certificate (TLS is then always available, so nothing breaks), `prefer` otherwise (TLS
/// is picked up as soon as it is configured). verify-full would need the CA on the
/// application's side, which the URI cannot carry.
pub(crate) fn app_sslmode(spec: &ConnectionPoolSpec) -> SslMode {
    let serves_tls = spec
        .tls
        .as_ref()
        .and_then(|t| t.client.as_ref())
        .is_some_and(|c| c.effective_mode() != SslMode::Disable);
    if serves_tls {
        SslMode::Require
    } else {
        SslMode::Prefer
    }
}
