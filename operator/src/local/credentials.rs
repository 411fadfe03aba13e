//! The local volume's secrets, so `logdb up` is safe on a shared machine without setup: a CA, the
//! PostgreSQL port's certificate and one certificate per kind of part (storage, compute, the
//! config store in `logdb up` itself, for the mutual TLS between them) in `<data>/tls`, and the
//! `logdb` user's password — a users file for the compute nodes and a pgpass file for clients,
//! both readable by the owner only. Made by the first `logdb up`, kept after; the certificates
//! are re-issued at every start, so none runs out. `--insecure` skips all of it (trust,
//! plaintext).

use std::path::{Path, PathBuf};

use logdb_common::peer_tls::{self, Role};
use logdb_common::pki::{self, CertDir, LeafFiles, Usage};

use super::LocalError;

/// The user `logdb up` makes.
pub const USER: &str = "logdb";

#[derive(Clone, Debug)]
pub struct LocalCredentials {
    pub ca: PathBuf,
    pub server: LeafFiles,
    /// The certificate of each kind of part, in [`Role::ALL`]'s order.
    pub peers: Vec<(Role, LeafFiles)>,
    pub users_file: PathBuf,
    pub passfile: PathBuf,
}

fn refused(e: impl std::fmt::Display) -> LocalError {
    LocalError::Refused(format!("preparing TLS and passwords: {e}"))
}

impl LocalCredentials {
    /// Makes (or keeps) the CA and the password, and issues the server certificate for
    /// loopback.
    pub fn prepare(dir: &Path, installation: &str) -> Result<LocalCredentials, LocalError> {
        let certs = CertDir::new(dir.join("tls"));
        let ca = certs.ca(installation).map_err(refused)?;
        let server = certs
            .issue(
                &ca,
                "server",
                &format!("logdb {installation} PostgreSQL port"),
                &["localhost".into(), "127.0.0.1".into(), "::1".into()],
                Usage::Server,
            )
            .map_err(refused)?;
        let loopback = ["localhost".into(), "127.0.0.1".into(), "::1".into()];
        let peers = Role::ALL
            .into_iter()
            .map(|role| {
                certs
                    .issue(
                        &ca,
                        &format!("peer-{}", role.name()),
                        &format!("logdb {installation} {}", role.name()),
                        &peer_tls::cert_names(&[role], peer_tls::Scope::Installation, &loopback),
                        Usage::Peer,
                    )
                    .map(|leaf| (role, leaf))
            })
            .collect::<Result<_, _>>()
            .map_err(refused)?;
        let users_file = dir.join("users");
        let passfile = dir.join("pgpass");
        let password = match std::fs::read_to_string(&users_file) {
            Ok(text) => text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{USER}:")).map(str::to_string))
                .ok_or_else(|| {
                    LocalError::Refused(format!(
                        "{} has no line for user {USER}; remove the file to make a new password",
                        users_file.display()
                    ))
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let p = pki::random_password();
                pki::write_file(&users_file, &format!("{USER}:{p}\n"), true).map_err(refused)?;
                p
            }
            Err(e) => {
                return Err(LocalError::io(format!("reading {}", users_file.display()))(
                    e,
                ))
            }
        };
        // libpq's password file: any host, port and database, this user.
        pki::write_file(&passfile, &format!("*:*:*:{USER}:{password}\n"), true).map_err(refused)?;
        Ok(LocalCredentials {
            ca: certs.ca_cert(),
            server,
            peers,
            users_file,
            passfile,
        })
    }

    fn peer(&self, role: Role) -> &LeafFiles {
        &self
            .peers
            .iter()
            .find(|(r, _)| *r == role)
            .expect("a certificate per role")
            .1
    }

    /// The `--peer-*` arguments of a part of `role`.
    pub fn peer_args(&self, role: Role) -> Vec<String> {
        peer_tls::child_args(&self.ca, self.peer(role))
    }

    /// `logdb up`'s own identity: the config store member it runs.
    pub fn config_transport(&self) -> Result<peer_tls::Transport, LocalError> {
        let leaf = self.peer(Role::Config);
        let m = peer_tls::Mutual::load(&self.ca, &leaf.cert, &leaf.key).map_err(refused)?;
        Ok(peer_tls::Transport::Mutual(std::sync::Arc::new(m)))
    }

    /// What a compute node is started with: TLS required, SCRAM with the users file, its
    /// certificate for the other parts.
    pub fn compute_args(&self) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        let mut args = vec![
            "--tls-cert".into(),
            p(&self.server.cert),
            "--tls-key".into(),
            p(&self.server.key),
            "--users-file".into(),
            p(&self.users_file),
            "--require-tls".into(),
        ];
        args.extend(self.peer_args(Role::Compute));
        args
    }

    /// The connection URL's query: verify the server against the local CA, the password from
    /// the pgpass file.
    pub fn url_query(&self) -> String {
        format!(
            "?sslmode=verify-full&sslrootcert={}&passfile={}",
            percent_encode(&self.ca.display().to_string()),
            percent_encode(&self.passfile.display().to_string())
        )
    }
}

/// Percent-encodes what a URL query value may not hold as is.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The psql URL of a local endpoint.
pub fn psql_url(port: u16, volume: &str, creds: Option<&LocalCredentials>) -> String {
    format!(
        "postgresql://{USER}@127.0.0.1:{port}/{volume}{}",
        creds.map_or(String::new(), LocalCredentials::url_query)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_kept_across_starts_and_the_url_verifies_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalCredentials::prepare(dir.path(), "demo").unwrap();
        let first = std::fs::read_to_string(&a.users_file).unwrap();
        let b = LocalCredentials::prepare(dir.path(), "demo").unwrap();
        assert_eq!(std::fs::read_to_string(&b.users_file).unwrap(), first);
        assert!(first.starts_with("logdb:") && first.trim().len() == "logdb:".len() + 24);
        let pass = std::fs::read_to_string(&b.passfile).unwrap();
        assert_eq!(pass.trim(), format!("*:*:*:{}", first.trim()));
        let url = psql_url(5433, "demo", Some(&b));
        assert!(
            url.starts_with(
                "postgresql://logdb@127.0.0.1:5433/demo?sslmode=verify-full&sslrootcert=/"
            ),
            "{url}"
        );
        assert_eq!(
            psql_url(5433, "demo", None),
            "postgresql://logdb@127.0.0.1:5433/demo"
        );
        assert_eq!(percent_encode("/a b&c"), "/a%20b%26c");
    }
}
