//! The Secrets a LogVolume's compute pods need, and when each is (re)made — pure, so the
//! controller only gets, creates and applies:
//!
//! - `<name>-app` (or the Secret `spec.appSecret` names, which the user makes): the
//!   `kubernetes.io/basic-auth` user and password clients log in with; made once with a random
//!   password, never overwritten;
//! - `<name>-ca`: the volume's certificate authority (certificate and key), made once;
//! - `<name>-server-tls`: the PostgreSQL port's `kubernetes.io/tls` certificate for the
//!   volume's Service names, with the CA certificate beside it (what a client's
//!   `sslrootcert` is); re-issued once less than `pki::RENEW_BEFORE` is left of it, or when the
//!   CA changed. Its expiry is on the annotation `logdb.io/not-after`, which also goes on the
//!   compute pod template, so a renewed certificate rolls the compute pods onto it;
//! - `<name>-peer-tls`: the certificates the volume's storage and compute pods present to each
//!   other and to the operator's config store (mutual TLS), issued by the installation's CA
//!   (the operator's, kept in its own namespace as `<operator service>-installation-ca`) with
//!   that CA's certificate beside them; renewed like the server certificate, its expiry on the
//!   annotation `logdb.io/peer-not-after` of both pod templates.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::ResourceExt;
use logdb_common::peer_tls::Role;
use logdb_common::pki::{Issued, RENEW_BEFORE};

use crate::spec::LogVolume;

/// Annotation with a certificate's expiry, in seconds since the Unix epoch.
pub const NOT_AFTER: &str = "logdb.io/not-after";
/// Pod-template annotation with a digest of the login the compute pods read (they take it as
/// environment variables at start, so a changed Secret must restart them).
pub const LOGIN_HASH: &str = "logdb.io/login-sha256";

/// A digest (SHA-256, first 16 bytes, hex) of an app Secret's username and password.
pub fn login_hash(s: &Secret) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for key in ["username", "password"] {
        let v = s
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map_or(&[][..], |v| &v.0[..]);
        ctx.update(&(v.len() as u64).to_le_bytes());
        ctx.update(v);
    }
    ctx.finish().as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Pod-template annotation with the expiry of the pods' peer certificates.
pub const PEER_NOT_AFTER: &str = "logdb.io/peer-not-after";
/// Where storage and compute pods mount their peer certificates.
pub const PEER_MOUNT: &str = "/etc/logdb/peer";
/// The keys of a server Secret's certificate and of a peer Secret's.
pub const SERVER_KEYS: &[&str] = &["tls.crt", "tls.key"];
pub const PEER_KEYS: &[&str] = &["storage.crt", "storage.key", "compute.crt", "compute.key"];

/// The user the operator makes.
pub const APP_USER: &str = "app";
/// Where compute pods mount the server certificate.
pub const TLS_MOUNT: &str = "/etc/logdb/tls";

pub fn app_secret_name(lv: &LogVolume) -> String {
    lv.spec
        .app_secret
        .clone()
        .unwrap_or_else(|| format!("{}-app", lv.name_any()))
}

pub fn ca_secret_name(lv: &LogVolume) -> String {
    format!("{}-ca", lv.name_any())
}

pub fn server_secret_name(lv: &LogVolume) -> String {
    format!("{}-server-tls", lv.name_any())
}

pub fn peer_secret_name(lv: &LogVolume) -> String {
    format!("{}-peer-tls", lv.name_any())
}

/// The Secret of the installation's CA in the operator's namespace.
pub fn installation_ca_name(operator_service: &str) -> String {
    format!("{operator_service}-installation-ca")
}

/// The installation's CA Secret (not owned by any LogVolume: it outlives them all).
pub fn installation_ca_secret(
    name: &str,
    namespace: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "logdb-operator".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: data(&[("ca.crt", cert_pem), ("ca.key", key_pem)]),
        ..Default::default()
    }
}

/// The names a part of `lv` is reached by (every pod of its headless Service) and its role.
pub fn peer_names(lv: &LogVolume, role: Role) -> Vec<String> {
    let (name, ns) = (
        lv.name_any(),
        lv.namespace().unwrap_or_else(|| "default".into()),
    );
    let svc = match role {
        Role::Storage => format!("{name}-storage"),
        Role::Compute => format!("{name}-compute"),
        // A LogVolume has no config store pods, and gets no member's certificate.
        Role::Config => return Vec::new(),
    };
    let volume = crate::controller::volume_id(lv);
    logdb_common::peer_tls::cert_names(
        &[role],
        logdb_common::peer_tls::Scope::Volume(&volume),
        &[
            format!("*.{svc}.{ns}.svc"),
            format!("*.{svc}.{ns}.svc.cluster.local"),
        ],
    )
}

/// The peer Secret of `lv`: its storage and compute pods' certificates and the installation's
/// CA certificate.
pub fn peer_secret(lv: &LogVolume, ca_pem: &str, storage: &Issued, compute: &Issued) -> Secret {
    let not_after = storage.not_after_unix.min(compute.not_after_unix);
    Secret {
        metadata: meta(
            lv,
            peer_secret_name(lv),
            Some(BTreeMap::from([(
                NOT_AFTER.to_string(),
                not_after.to_string(),
            )])),
        ),
        type_: Some("Opaque".into()),
        data: data(&[
            ("storage.crt", &storage.cert_pem),
            ("storage.key", &storage.key_pem),
            ("compute.crt", &compute.cert_pem),
            ("compute.key", &compute.key_pem),
            ("ca.crt", ca_pem),
        ]),
        ..Default::default()
    }
}

fn meta(lv: &LogVolume, name: String, annotations: Option<BTreeMap<String, String>>) -> ObjectMeta {
    ObjectMeta {
        annotations,
        ..crate::objects::owned_meta(lv, name, "compute")
    }
}

fn data(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, ByteString>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    )
}

/// The app Secret the operator makes (when `spec.appSecret` names none).
pub fn app_secret(lv: &LogVolume, password: &str) -> Secret {
    Secret {
        metadata: meta(lv, app_secret_name(lv), None),
        type_: Some("kubernetes.io/basic-auth".into()),
        data: data(&[("username", APP_USER), ("password", password)]),
        ..Default::default()
    }
}

/// Whether `s` has the `username` and `password` keys a compute pod reads; what is missing.
pub fn app_secret_problem(s: &Secret) -> Option<String> {
    let has = |k: &str| {
        s.data
            .as_ref()
            .is_some_and(|d| d.get(k).is_some_and(|v| !v.0.is_empty()))
    };
    let missing: Vec<&str> = ["username", "password"]
        .into_iter()
        .filter(|k| !has(k))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "Secret {} has no {}: it needs the keys username and password (type kubernetes.io/basic-auth)",
            s.name_any(),
            missing.join(" or ")
        )
    })
}

pub fn ca_secret(lv: &LogVolume, cert_pem: &str, key_pem: &str) -> Secret {
    Secret {
        metadata: meta(lv, ca_secret_name(lv), None),
        type_: Some("Opaque".into()),
        data: data(&[("ca.crt", cert_pem), ("ca.key", key_pem)]),
        ..Default::default()
    }
}

/// The CA certificate and key of a CA Secret.
pub fn ca_of(s: &Secret) -> Option<(String, String)> {
    let d = s.data.as_ref()?;
    let text = |k: &str| String::from_utf8(d.get(k)?.0.clone()).ok();
    Some((text("ca.crt")?, text("ca.key")?))
}

/// The names clients and pods reach the PostgreSQL port by.
pub fn server_names(lv: &LogVolume) -> Vec<String> {
    let (name, ns) = (
        lv.name_any(),
        lv.namespace().unwrap_or_else(|| "default".into()),
    );
    let mut names = Vec::new();
    for svc in [
        format!("{name}-rw"),
        format!("{name}-ro"),
        format!("{name}-compute"),
    ] {
        names.push(svc.clone());
        names.push(format!("{svc}.{ns}"));
        names.push(format!("{svc}.{ns}.svc"));
        names.push(format!("*.{svc}.{ns}.svc"));
        names.push(format!("{svc}.{ns}.svc.cluster.local"));
        names.push(format!("*.{svc}.{ns}.svc.cluster.local"));
    }
    names.push("localhost".into());
    names
}

pub fn server_secret(lv: &LogVolume, ca_pem: &str, leaf: &Issued) -> Secret {
    Secret {
        metadata: meta(
            lv,
            server_secret_name(lv),
            Some(BTreeMap::from([(
                NOT_AFTER.to_string(),
                leaf.not_after_unix.to_string(),
            )])),
        ),
        type_: Some("kubernetes.io/tls".into()),
        data: data(&[
            ("tls.crt", &leaf.cert_pem),
            ("tls.key", &leaf.key_pem),
            ("ca.crt", ca_pem),
        ]),
        ..Default::default()
    }
}

/// When the certificates of Secret `s` (its `keys`) expire, if they are all there and from the
/// CA `ca_pem`.
pub fn not_after(s: &Secret, ca_pem: &str, keys: &[&str]) -> Option<u64> {
    let same_ca = s
        .data
        .as_ref()?
        .get("ca.crt")
        .is_some_and(|c| c.0 == ca_pem.as_bytes());
    let complete = keys
        .iter()
        .all(|k| s.data.as_ref().is_some_and(|d| d.contains_key(*k)));
    if !same_ca || !complete {
        return None;
    }
    s.annotations().get(NOT_AFTER)?.parse().ok()
}

/// Whether the certificates of Secret `existing` (its `keys`) must be issued (again) at
/// `now_unix`.
pub fn renew_due(existing: Option<&Secret>, ca_pem: &str, keys: &[&str], now_unix: u64) -> bool {
    match existing.and_then(|s| not_after(s, ca_pem, keys)) {
        Some(t) => t.saturating_sub(now_unix) < RENEW_BEFORE.as_secs(),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logdb_common::pki::{Ca, Usage};

    fn lv() -> LogVolume {
        let mut lv: LogVolume =
            serde_yaml::from_str(include_str!("../../examples/logvolume.yaml")).unwrap();
        lv.metadata.namespace = Some("shop".into());
        lv
    }

    #[test]
    fn a_server_certificate_is_renewed_before_it_expires_or_when_the_ca_changes() {
        let lv = lv();
        let ca = Ca::create("orders").unwrap();
        let leaf = ca
            .issue("orders", &server_names(&lv), Usage::Server)
            .unwrap();
        let s = server_secret(&lv, &ca.cert_pem, &leaf);
        let now = leaf.not_after_unix - 300 * 86_400;
        assert!(
            !renew_due(Some(&s), &ca.cert_pem, SERVER_KEYS, now),
            "fresh: kept"
        );
        assert!(
            renew_due(
                Some(&s),
                &ca.cert_pem,
                SERVER_KEYS,
                leaf.not_after_unix - 29 * 86_400
            ),
            "30 days before: renewed"
        );
        assert!(
            renew_due(Some(&s), &ca.cert_pem, SERVER_KEYS, leaf.not_after_unix + 1),
            "expired: renewed"
        );
        assert!(
            renew_due(None, &ca.cert_pem, SERVER_KEYS, now),
            "missing: issued"
        );
        let other = Ca::create("orders").unwrap();
        assert!(
            renew_due(Some(&s), &other.cert_pem, SERVER_KEYS, now),
            "another CA: re-issued"
        );
        let mut no_annotation = s.clone();
        no_annotation.metadata.annotations = None;
        assert!(renew_due(
            Some(&no_annotation),
            &ca.cert_pem,
            SERVER_KEYS,
            now
        ));
        // The certificate serves every name of the volume's Services.
        let pem = String::from_utf8(s.data.as_ref().unwrap()["tls.crt"].0.clone()).unwrap();
        for host in [
            "orders-rw",
            "orders-ro.shop.svc",
            "orders-compute-1.orders-compute.shop.svc",
        ] {
            logdb_common::tls::verify_chain(&ca.cert_pem, &pem, host)
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
    }

    #[test]
    fn peer_certificates_name_every_pod_of_their_part_and_its_role() {
        use logdb_common::peer_tls::{roles_of_pem, Mutual};
        let lv = lv();
        let ca = Ca::create("installation").unwrap();
        let storage = ca
            .issue("s", &peer_names(&lv, Role::Storage), Usage::Peer)
            .unwrap();
        let compute = ca
            .issue("c", &peer_names(&lv, Role::Compute), Usage::Peer)
            .unwrap();
        let s = peer_secret(&lv, &ca.cert_pem, &storage, &compute);
        let now = storage.not_after_unix - 300 * 86_400;
        assert!(!renew_due(Some(&s), &ca.cert_pem, PEER_KEYS, now));
        assert!(renew_due(
            Some(&s),
            &ca.cert_pem,
            PEER_KEYS,
            storage.not_after_unix - 29 * 86_400
        ));
        let mut partial = s.clone();
        partial.data.as_mut().unwrap().remove("compute.key");
        assert!(renew_due(Some(&partial), &ca.cert_pem, PEER_KEYS, now));
        logdb_common::tls::verify_chain(
            &ca.cert_pem,
            &storage.cert_pem,
            "orders-storage-a-0.orders-storage.shop.svc",
        )
        .unwrap();
        logdb_common::tls::verify_chain(
            &ca.cert_pem,
            &compute.cert_pem,
            "orders-compute-0.orders-compute.shop.svc.cluster.local",
        )
        .unwrap();
        assert!(logdb_common::tls::verify_chain(
            &ca.cert_pem,
            &storage.cert_pem,
            "orders-compute-0.orders-compute.shop.svc"
        )
        .is_err());
        assert_eq!(roles_of_pem(&storage.cert_pem), vec![Role::Storage]);
        Mutual::from_pems(&ca.cert_pem, &compute.cert_pem, &compute.key_pem).unwrap();
    }

    #[test]
    fn the_app_secret_is_the_named_one_or_made_with_both_keys() {
        let mut lv = lv();
        assert_eq!(app_secret_name(&lv), "orders-app");
        let s = app_secret(&lv, "pw");
        assert_eq!(app_secret_problem(&s), None);
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/basic-auth"));
        let mut broken = s.clone();
        broken.data.as_mut().unwrap().remove("password");
        assert!(app_secret_problem(&broken).unwrap().contains("no password"));
        lv.spec.app_secret = Some("shop-db-login".into());
        assert_eq!(app_secret_name(&lv), "shop-db-login");
    }
}
