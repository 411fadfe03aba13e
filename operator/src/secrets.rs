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
//!   compute pod template, so a renewed certificate rolls the compute pods onto it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::ResourceExt;
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

/// When the server certificate `s` expires, if it is there and from the CA `ca_pem`.
pub fn not_after(s: &Secret, ca_pem: &str) -> Option<u64> {
    let same_ca = s
        .data
        .as_ref()?
        .get("ca.crt")
        .is_some_and(|c| c.0 == ca_pem.as_bytes());
    let has_pair = ["tls.crt", "tls.key"]
        .iter()
        .all(|k| s.data.as_ref().is_some_and(|d| d.contains_key(*k)));
    if !same_ca || !has_pair {
        return None;
    }
    s.annotations().get(NOT_AFTER)?.parse().ok()
}

/// Whether the server certificate must be issued (again) at `now_unix`.
pub fn renew_due(existing: Option<&Secret>, ca_pem: &str, now_unix: u64) -> bool {
    match existing.and_then(|s| not_after(s, ca_pem)) {
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
        assert!(!renew_due(Some(&s), &ca.cert_pem, now), "fresh: kept");
        assert!(
            renew_due(Some(&s), &ca.cert_pem, leaf.not_after_unix - 29 * 86_400),
            "30 days before: renewed"
        );
        assert!(
            renew_due(Some(&s), &ca.cert_pem, leaf.not_after_unix + 1),
            "expired: renewed"
        );
        assert!(renew_due(None, &ca.cert_pem, now), "missing: issued");
        let other = Ca::create("orders").unwrap();
        assert!(
            renew_due(Some(&s), &other.cert_pem, now),
            "another CA: re-issued"
        );
        let mut no_annotation = s.clone();
        no_annotation.metadata.annotations = None;
        assert!(renew_due(Some(&no_annotation), &ca.cert_pem, now));
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
