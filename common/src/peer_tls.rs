//! Mutual TLS between logdb's own parts (storage nodes, compute nodes, config store members and
//! the replication feed): every gRPC server asks for a client certificate from the
//! installation's CA and every channel presents one, so a process without the installation's
//! certificate is refused during the handshake, before any request is read.
//!
//! A certificate also says what its holder is and which volume it works for: DNS names
//! `<role>.role.logdb.invalid` and `<digest of the volume>.volume.logdb.invalid` (or
//! `any.volume.logdb.invalid`, installation-wide) among its subject alternative names (the
//! `.invalid` top-level domain can never name a real host). A request is served only for the
//! roles allowed to make it, and one about a volume only for a peer of that volume
//! ([`authorize`], [`authorize_for`]): a storage node takes records only from a compute node of
//! the records' volume, the config store a ticket request only from a compute node of that
//! volume, raft messages only from a member. A config store member works for every volume.
//!
//! A process holds one identity, chosen at start-up from its arguments ([`PeerTlsArgs`]) and
//! installed once ([`install`]); channels and servers made after that use it. Plaintext is what
//! `--insecure` asks for, and what a process that installed nothing (a test program) speaks.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

use crate::tls::TlsError;

/// What a part is, as its certificate says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A storage node.
    Storage,
    /// A compute node: the writer or a replica.
    Compute,
    /// A config store member (the operator on Kubernetes, `logdb up` locally).
    Config,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Storage, Role::Compute, Role::Config];

    pub fn name(self) -> &'static str {
        match self {
            Role::Storage => "storage",
            Role::Compute => "compute",
            Role::Config => "config",
        }
    }

    /// The subject alternative name a certificate of this role carries.
    pub fn san(self) -> String {
        format!("{}.role.logdb.invalid", self.name())
    }
}

/// Which volumes a certificate works for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every volume of the installation (`logdb up`'s parts, config store members).
    Installation,
    /// One volume (a LogVolume's storage and compute pods).
    Volume(&'a str),
}

impl Scope<'_> {
    /// The subject alternative name of this scope. A volume's name becomes a digest, so that
    /// any name (up to the config store's limits) makes one valid DNS label.
    pub fn san(self) -> String {
        match self {
            Scope::Installation => "any.volume.logdb.invalid".into(),
            Scope::Volume(v) => {
                let d = ring::digest::digest(&ring::digest::SHA256, v.as_bytes());
                let hex: String = d.as_ref()[..16]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("v{hex}.volume.logdb.invalid")
            }
        }
    }
}

/// Names no certificate may match: one that does holds a wildcard over logdb's own names and
/// is read as carrying no role or scope at all.
const ROLE_PROBE: &str = "zz-probe.role.logdb.invalid";
const SCOPE_PROBE: &str = "zz-probe.volume.logdb.invalid";

/// The certificate files of a part. All three, or `--insecure`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PeerTlsArgs {
    /// The installation's CA certificate (PEM): every peer's certificate must chain to it.
    #[arg(long, env = "LOGDB_PEER_CA")]
    pub peer_ca: Option<PathBuf>,
    /// This part's certificate (PEM), issued by the installation's CA.
    #[arg(long, env = "LOGDB_PEER_CERT")]
    pub peer_cert: Option<PathBuf>,
    /// The private key of --peer-cert (PEM).
    #[arg(long, env = "LOGDB_PEER_KEY")]
    pub peer_key: Option<PathBuf>,
}

impl PeerTlsArgs {
    /// The transport these arguments ask for: mutual TLS, or plaintext with `insecure`; anything
    /// in between is refused with what is missing.
    pub fn transport(&self, insecure: bool) -> Result<Transport, TlsError> {
        match (&self.peer_ca, &self.peer_cert, &self.peer_key) {
            (Some(ca), Some(cert), Some(key)) => {
                Ok(Transport::Mutual(Arc::new(Mutual::load(ca, cert, key)?)))
            }
            (None, None, None) if insecure => Ok(Transport::Plaintext),
            (None, None, None) => Err(TlsError::Config(
                "no certificate for the connections between logdb's parts: pass --peer-ca, \
                 --peer-cert and --peer-key (`logdb up` and the operator make them), or \
                 --insecure to speak plaintext to anyone"
                    .into(),
            )),
            _ => Err(TlsError::Config(
                "--peer-ca, --peer-cert and --peer-key go together: one of them is missing".into(),
            )),
        }
    }
}

/// A part's identity: the CA it trusts and the certificate it presents.
pub struct Mutual {
    server: ServerTlsConfig,
    client: ClientTlsConfig,
    roles: Vec<Role>,
}

impl Mutual {
    /// Reads and checks the three files: each must parse, the key must go with the
    /// certificate, and the certificate must carry a logdb role.
    pub fn load(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Mutual, TlsError> {
        // Builds a rustls config once to get its checks and clear errors (unreadable file,
        // not PEM, key of another certificate).
        crate::tls::server_config(cert, key, Some(ca))?;
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| TlsError::File {
                path: p.to_path_buf(),
                why: e.to_string(),
            })
        };
        Mutual::from_pems(&read(ca)?, &read(cert)?, &read(key)?).map_err(|e| match e {
            TlsError::Config(why) => TlsError::File {
                path: cert.to_path_buf(),
                why,
            },
            other => other,
        })
    }

    /// The identity of a CA certificate, a certificate and its key (PEM), as [`Mutual::load`]
    /// checks them.
    pub fn from_pems(ca: &str, cert: &str, key: &str) -> Result<Mutual, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let bad = |e: &dyn std::fmt::Display| TlsError::Config(e.to_string());
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| bad(&e))?;
        let private = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| bad(&e))?;
        CertificateDer::from_pem_slice(ca.as_bytes())
            .map_err(|e| bad(&format!("CA certificate: {e}")))?;
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.clone()], private)
        .map_err(|e| bad(&format!("the key does not go with the certificate: {e}")))?;
        let roles = roles_of(&leaf);
        if roles.is_empty() {
            return Err(TlsError::Config(format!(
                "not a logdb part's certificate: it names none of {}",
                Role::ALL.map(Role::san).join(", ")
            )));
        }
        let identity = Identity::from_pem(cert, key);
        Ok(Mutual {
            server: ServerTlsConfig::new()
                .identity(identity.clone())
                .client_ca_root(Certificate::from_pem(ca))
                .timeout(Duration::from_secs(10)),
            client: ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(identity)
                .timeout(Duration::from_secs(10)),
            roles,
        })
    }

    /// The roles this identity's certificate carries.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }
}

/// How a process speaks to the other parts.
#[derive(Clone)]
pub enum Transport {
    /// `--insecure`: no TLS, anyone who reaches a port is served.
    Plaintext,
    Mutual(Arc<Mutual>),
}

impl Transport {
    /// An endpoint for `address` (`host:port`): `https` with this identity, or `http`. The
    /// server's certificate must name the host (a name or an IP address).
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, tonic::transport::Error> {
        match self {
            Transport::Plaintext => Endpoint::from_shared(format!("http://{address}")),
            Transport::Mutual(m) => {
                Endpoint::from_shared(format!("https://{address}"))?.tls_config(m.client.clone())
            }
        }
    }

    /// A gRPC server builder that, with mutual TLS, refuses a peer without a certificate of the
    /// installation.
    pub fn server(&self) -> Result<Server, tonic::transport::Error> {
        match self {
            Transport::Plaintext => Ok(Server::builder()),
            Transport::Mutual(m) => Server::builder().tls_config(m.server.clone()),
        }
    }

    pub fn is_mutual(&self) -> bool {
        matches!(self, Transport::Mutual(_))
    }
}

/// The names a part's certificate carries: the hosts it is reached on, its roles and the
/// volumes it works for.
pub fn cert_names(roles: &[Role], scope: Scope<'_>, hosts: &[String]) -> Vec<String> {
    hosts
        .iter()
        .cloned()
        .chain(roles.iter().map(|r| r.san()))
        .chain([scope.san()])
        .collect()
}

/// The arguments that hand a child process its identity.
pub fn child_args(ca: &std::path::Path, leaf: &crate::pki::LeafFiles) -> Vec<String> {
    vec![
        "--peer-ca".into(),
        ca.display().to_string(),
        "--peer-cert".into(),
        leaf.cert.display().to_string(),
        "--peer-key".into(),
        leaf.key.display().to_string(),
    ]
}

static INSTALLED: OnceLock<Transport> = OnceLock::new();

/// Makes `transport` this process's way of speaking to the other parts. Once per process; a
/// second call is refused.
pub fn install(transport: Transport) -> Result<(), TlsError> {
    INSTALLED
        .set(transport)
        .map_err(|_| TlsError::Config("the process's peer identity is already chosen".into()))
}

/// The installed transport (plaintext if none was installed).
pub fn transport() -> Transport {
    INSTALLED.get().cloned().unwrap_or(Transport::Plaintext)
}

/// An endpoint for `address` with the installed transport.
pub fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    transport().endpoint(address)
}

fn matches(cert: &webpki::EndEntityCert<'_>, name: &str) -> bool {
    ServerName::try_from(name.to_string())
        .is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
}

/// The logdb roles a certificate (DER) carries.
pub fn roles_of(cert: &CertificateDer<'_>) -> Vec<Role> {
    webpki::EndEntityCert::try_from(cert).map_or_else(|_| Vec::new(), |c| parsed_roles(&c))
}

fn parsed_roles(cert: &webpki::EndEntityCert<'_>) -> Vec<Role> {
    if matches(cert, ROLE_PROBE) {
        return Vec::new();
    }
    Role::ALL
        .into_iter()
        .filter(|r| matches(cert, &r.san()))
        .collect()
}

/// Whether a certificate (DER) works for `volume`: it is a config store member's, or names
/// the volume or the whole installation.
pub fn works_for(cert: &CertificateDer<'_>, volume: &str) -> bool {
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| parsed_works_for(&c, &parsed_roles(&c), volume))
}

fn parsed_works_for(cert: &webpki::EndEntityCert<'_>, roles: &[Role], volume: &str) -> bool {
    if matches(cert, SCOPE_PROBE) {
        return false;
    }
    roles.contains(&Role::Config)
        || matches(cert, &Scope::Installation.san())
        || matches(cert, &Scope::Volume(volume).san())
}

/// The logdb roles a certificate (PEM) carries.
pub fn roles_of_pem(pem: &str) -> Vec<Role> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_or_else(|_| Vec::new(), |c| roles_of(&c))
}

/// The peer's certificate chain, if the connection is TLS; `Err` if it must be and is not.
/// A connection that carries TLS is always checked, whatever this process installed; a
/// plaintext one is let through only where plaintext is what the process chose.
fn peer_chain<T>(
    request: &Request<T>,
) -> Result<Option<Arc<Vec<CertificateDer<'static>>>>, Status> {
    match request.peer_certs() {
        Some(chain) => Ok(Some(chain)),
        None if transport().is_mutual() => Err(Status::unauthenticated(
            "this part speaks mutual TLS only; the peer presented no certificate",
        )),
        None => Ok(None),
    }
}

/// Serves `request` (what `what` names) only if its peer is one of `allowed`: the peer's
/// certificate (already checked against the CA in the handshake) must carry one of those
/// roles. A plaintext connection of an `--insecure` process serves everyone.
pub fn authorize<T>(request: &Request<T>, what: &str, allowed: &[Role]) -> Result<(), Status> {
    match peer_chain(request)? {
        None => Ok(()),
        Some(chain) => authorize_certs(Some(chain.as_slice()), what, allowed, None),
    }
}

/// [`authorize`] for a request about `volume`: the peer must also work for that volume.
pub fn authorize_for<T>(
    request: &Request<T>,
    what: &str,
    allowed: &[Role],
    volume: &str,
) -> Result<(), Status> {
    match peer_chain(request)? {
        None => Ok(()),
        Some(chain) => authorize_certs(Some(chain.as_slice()), what, allowed, Some(volume)),
    }
}

/// Refuses `request` (what `what` names) unless its peer's certificate names the host of
/// `address` (`host:port`): a part registers only where it can prove it serves.
pub fn serves_at<T>(request: &Request<T>, what: &str, address: &str) -> Result<(), Status> {
    let Some(chain) = peer_chain(request)? else {
        return Ok(());
    };
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let named = chain
        .first()
        .and_then(|leaf| webpki::EndEntityCert::try_from(leaf).ok())
        .is_some_and(|cert| matches(&cert, host));
    if named {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{what}: the peer's certificate does not name {host:?}, the host of {address:?}"
        )))
    }
}

/// The check of [`authorize`]/[`authorize_for`] on the peer's certificate chain (leaf first),
/// `None` without one.
pub fn authorize_certs(
    certs: Option<&[CertificateDer<'static>]>,
    what: &str,
    allowed: &[Role],
    volume: Option<&str>,
) -> Result<(), Status> {
    let names = || {
        allowed
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let Some(leaf) = certs.and_then(<[_]>::first) else {
        return Err(Status::unauthenticated(format!(
            "{what} needs the installation's certificate of a {} part; the peer presented none",
            names()
        )));
    };
    // Parsed once: this runs for every request, WriteRecords included.
    let parsed = webpki::EndEntityCert::try_from(leaf).ok();
    let roles = parsed.as_ref().map_or_else(Vec::new, parsed_roles);
    if !allowed.iter().any(|r| roles.contains(r)) {
        let has = if roles.is_empty() {
            "no logdb role".to_string()
        } else {
            roles
                .iter()
                .map(|r| r.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Status::permission_denied(format!(
            "{what} is only served to a {} part; the peer's certificate is for {has}",
            names()
        )));
    }
    match volume {
        Some(v)
            if !parsed
                .as_ref()
                .is_some_and(|c| parsed_works_for(c, &roles, v)) =>
        {
            Err(Status::permission_denied(format!(
                "{what} for volume {v:?}: the peer's certificate is for another volume"
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, Usage};

    fn der(pem: &str) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_certificate_says_which_parts_it_belongs_to() {
        let ca = Ca::create("test").unwrap();
        let issue = |names: &[String]| der(&ca.issue("x", names, Usage::Peer).unwrap().cert_pem);
        let storage = issue(&["127.0.0.1".into(), Role::Storage.san()]);
        assert_eq!(roles_of(&storage), vec![Role::Storage]);
        let both = issue(&[Role::Config.san(), Role::Compute.san()]);
        assert_eq!(roles_of(&both), vec![Role::Compute, Role::Config]);
        let none = issue(&["localhost".into()]);
        assert!(roles_of(&none).is_empty());
        // A look-alike name of another domain is not a role.
        let lookalike = issue(&["storage.role.logdb.invalid.example.com".into()]);
        assert!(roles_of(&lookalike).is_empty());
        // A wildcard over the roles (or the volumes) carries none of them.
        let wild = issue(&[
            "*.role.logdb.invalid".into(),
            "*.volume.logdb.invalid".into(),
        ]);
        assert!(roles_of(&wild).is_empty());
        assert!(!works_for(&wild, "shop-orders"));
    }

    #[test]
    fn a_certificate_works_for_its_volume_or_the_installation() {
        let ca = Ca::create("test").unwrap();
        let issue = |roles: &[Role], scope| {
            der(&ca
                .issue("x", &cert_names(roles, scope, &[]), Usage::Peer)
                .unwrap()
                .cert_pem)
        };
        let orders = issue(&[Role::Compute], Scope::Volume("shop-orders"));
        assert!(works_for(&orders, "shop-orders"));
        assert!(!works_for(&orders, "shop-carts"));
        let local = issue(&[Role::Storage], Scope::Installation);
        assert!(works_for(&local, "shop-carts"));
        // A member works for every volume whatever its scope says.
        let member = issue(&[Role::Config], Scope::Volume("x"));
        assert!(works_for(&member, "shop-carts"));
        // A name too long for one DNS label still makes a scope.
        let long = "n".repeat(63) + "-" + &"m".repeat(63);
        assert!(works_for(
            &issue(&[Role::Compute], Scope::Volume(&long)),
            &long
        ));
        let chain = [orders];
        authorize_certs(
            Some(&chain[..]),
            "WriteRecords",
            &[Role::Compute],
            Some("shop-orders"),
        )
        .unwrap();
        let e = authorize_certs(
            Some(&chain[..]),
            "WriteRecords",
            &[Role::Compute],
            Some("shop-carts"),
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("another volume"), "{}", e.message());
    }

    #[test]
    fn a_request_is_served_only_for_the_roles_allowed_to_make_it() {
        let ca = Ca::create("test").unwrap();
        let storage = der(&ca
            .issue("s", &[Role::Storage.san()], Usage::Peer)
            .unwrap()
            .cert_pem);
        let compute = der(&ca
            .issue("c", &[Role::Compute.san()], Usage::Peer)
            .unwrap()
            .cert_pem);
        authorize_certs(
            Some(&[compute.clone()][..]),
            "WriteRecords",
            &[Role::Compute],
            None,
        )
        .unwrap();
        let denied = authorize_certs(Some(&[storage][..]), "WriteRecords", &[Role::Compute], None)
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("only served to a compute part")
                && denied.message().contains("certificate is for storage"),
            "{}",
            denied.message()
        );
        let none = authorize_certs(None, "WriteRecords", &[Role::Compute], None).unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn half_a_set_of_certificate_files_is_refused() {
        let args = PeerTlsArgs {
            peer_ca: Some("/x/ca.crt".into()),
            ..Default::default()
        };
        let e = args.transport(true).err().unwrap().to_string();
        assert!(e.contains("go together"), "{e}");
        let e = PeerTlsArgs::default()
            .transport(false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--insecure"), "{e}");
        assert!(!PeerTlsArgs::default().transport(true).unwrap().is_mutual());
    }
}
