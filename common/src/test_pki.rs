//! Certificates for tests and benchmarks that run logdb's parts with mutual TLS: an
//! installation's CA and one certificate per kind of part in a directory of their own, the
//! `--peer-*` arguments that hand them to a child, and the identities a test speaks with.

use crate::stats::TempDir;

/// An installation's CA and one certificate per part (valid for 127.0.0.1 and localhost) in a
/// directory of their own, for tests and benchmarks that run the parts with mutual TLS.
pub struct TestPki {
    pub certs: crate::pki::CertDir,
    _dir: TempDir,
}

impl TestPki {
    pub fn new() -> TestPki {
        use crate::peer_tls::{cert_names, Role, Scope};
        use crate::pki::{CertDir, Usage};
        let dir = TempDir::new("logdb-test-pki").expect("temp dir");
        let certs = CertDir::new(&dir.0);
        let ca = certs.ca("test").expect("a CA");
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        for role in Role::ALL {
            certs
                .issue(
                    &ca,
                    role.name(),
                    role.name(),
                    &cert_names(&[role], Scope::Installation, &hosts),
                    Usage::Peer,
                )
                .expect("a part's certificate");
        }
        TestPki { certs, _dir: dir }
    }

    /// The `--peer-*` arguments of a part of `role`.
    pub fn args(&self, role: crate::peer_tls::Role) -> Vec<String> {
        crate::peer_tls::child_args(&self.certs.ca_cert(), &self.certs.leaf(role.name()))
    }

    /// The identity of a part of `role`, for a test that speaks to the parts itself.
    pub fn transport(&self, role: crate::peer_tls::Role) -> crate::peer_tls::Transport {
        self.identity(&self.certs.leaf(role.name()))
    }

    /// The identity of a part of `role` that works for `volume` only (as a LogVolume's pods).
    pub fn transport_for(
        &self,
        role: crate::peer_tls::Role,
        volume: &str,
    ) -> crate::peer_tls::Transport {
        use crate::peer_tls::{cert_names, Scope};
        let ca = self.certs.ca("test").expect("the test CA");
        let name = format!("{}-of-{volume}", role.name());
        let hosts = ["127.0.0.1".to_string()];
        let leaf = self
            .certs
            .issue(
                &ca,
                &name,
                &name,
                &cert_names(&[role], Scope::Volume(volume), &hosts),
                crate::pki::Usage::Peer,
            )
            .expect("a scoped certificate");
        self.identity(&leaf)
    }

    fn identity(&self, leaf: &crate::pki::LeafFiles) -> crate::peer_tls::Transport {
        crate::peer_tls::Transport::Mutual(std::sync::Arc::new(
            crate::peer_tls::Mutual::load(&self.certs.ca_cert(), &leaf.cert, &leaf.key)
                .expect("the test certificates load"),
        ))
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
