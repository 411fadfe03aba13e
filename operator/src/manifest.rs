//! Reading a LogVolume manifest: the YAML a user `kubectl apply`s, checked the way the API server
//! and the CRD would check it (apiVersion, kind, name, known fields, the spec's rules), with errors
//! that say which file, which field and why.

use std::path::Path;

use crate::spec::{LogVolume, Target};

/// The manifest `logdb up` runs when given none: a laptop-sized volume.
pub const LOCAL_DEFAULT: &str = include_str!("../../examples/local.yaml");

const API_VERSION: &str = "logdb.io/v1alpha1";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Reads and checks the manifest at `path`.
pub fn load(path: &Path, target: Target) -> Result<LogVolume, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string(), target)
}

/// Parses and checks one LogVolume from YAML; `origin` names it in errors.
pub fn parse(text: &str, origin: &str, target: Target) -> Result<LogVolume, ManifestError> {
    let invalid = |message: String| ManifestError::Invalid {
        origin: origin.to_string(),
        message,
    };
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| invalid(format!("not YAML: {e}")))?;
    let field = |name: &str| doc.get(name).and_then(serde_yaml::Value::as_str);
    match field("apiVersion") {
        Some(API_VERSION) => {}
        other => {
            return Err(invalid(format!(
                "apiVersion: {other:?}, expected {API_VERSION:?}"
            )))
        }
    }
    match field("kind") {
        Some("LogVolume") => {}
        other => return Err(invalid(format!("kind: {other:?}, expected \"LogVolume\""))),
    }
    if let Some(map) = doc.as_mapping() {
        for key in map.keys() {
            let key = key.as_str().unwrap_or_default();
            if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&key) {
                return Err(invalid(format!("unknown field {key:?}")));
            }
        }
    }
    let mut doc = doc;
    if let Some(map) = doc.as_mapping_mut() {
        // Every spec field has a default: a manifest may leave the spec out.
        map.entry("spec".into())
            .or_insert_with(|| serde_yaml::Mapping::new().into());
    }
    let mut volume: LogVolume = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        invalid(format!("{path}: {}", e.into_inner()))
    })?;
    let name = volume.metadata.name.clone().unwrap_or_default();
    check_name(&name).map_err(invalid)?;
    volume.spec.volume_spec(target).map_err(invalid)?;
    volume.status = None;
    Ok(volume)
}

/// A DNS-1123 label of at most 40 characters (the operator derives object names from it).
fn check_name(name: &str) -> Result<(), String> {
    if logdb_config_store::model::is_dns_label(name, 40) {
        Ok(())
    } else {
        Err(format!(
            "metadata.name: {name:?} must be 1-40 lowercase letters, digits or '-', starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_default_is_valid() {
        let v = parse(LOCAL_DEFAULT, "default", Target::Local).unwrap();
        assert_eq!(v.metadata.name.as_deref(), Some("demo"));
    }

    #[test]
    fn the_kubernetes_example_is_valid() {
        let text = include_str!("../../examples/logvolume.yaml");
        parse(text, "example", Target::Kubernetes).unwrap();
    }

    #[test]
    fn bad_manifests_say_what_and_where() {
        let head = "apiVersion: logdb.io/v1alpha1\nkind: LogVolume\nmetadata:\n  name: v1\n";
        let cases = [
            ("[1, 2", "f.yaml: not YAML"),
            (
                "apiVersion: v1\nkind: LogVolume",
                "apiVersion: Some(\"v1\")",
            ),
            (
                "apiVersion: logdb.io/v1alpha1\nkind: Pod",
                "kind: Some(\"Pod\")",
            ),
            (&format!("{head}spek: {{}}"), "unknown field \"spek\""),
            (
                &format!("{head}spec:\n  pageSize: 1000"),
                "spec.pageSize: 1000",
            ),
            (
                &format!("{head}spec:\n  pagesize: 8192"),
                "unknown field `pagesize`",
            ),
            (&format!("{head}spec:\n  replicas: many"), "spec.replicas"),
            (
                "apiVersion: logdb.io/v1alpha1\nkind: LogVolume\nmetadata:\n  name: Big_Name\n",
                "metadata.name: \"Big_Name\"",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text, "f.yaml", Target::Local)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("f.yaml: "), "{err}");
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
