//! The `LogVolume` resource: the one spec a user writes, whether they `kubectl apply` it or hand
//! it to `logdb up`. The CRD is generated from these types; the same checks run in both places,
//! with the same messages, by mapping the spec onto the config store's [`VolumeSpec`].

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use logdb_config_store::model::{VolumeSpec, DEFAULT_MAX_SIZE, DEFAULT_SEGMENT_SIZE};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{parse_duration, parse_quantity};

/// A logdb volume: one database on six storage segments per protection group, a writer and up to
/// 15 read replicas.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "logdb.io",
    version = "v1alpha1",
    kind = "LogVolume",
    namespaced,
    shortname = "lv",
    status = "LogVolumeStatus",
    printcolumn = r#"{"name":"Writer","type":"string","jsonPath":".status.writer"}"#,
    printcolumn = r#"{"name":"Epoch","type":"integer","jsonPath":".status.epoch"}"#,
    printcolumn = r#"{"name":"Replicas","type":"string","jsonPath":".status.replicasReady"}"#,
    printcolumn = r#"{"name":"PGs","type":"integer","jsonPath":".status.protectionGroups"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.allocated"}"#,
    printcolumn = r#"{"name":"Lag","type":"string","jsonPath":".status.lag"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(
    "quantity(string(self.maxSize)).compareTo(quantity(string(self.segmentSize))) >= 0"
).message("maxSize must be at least one segment (segmentSize)"))]
#[x_kube(validation = Rule::new(
    "has(self.writeRate) == has(oldSelf.writeRate)"
).message("writeRate can only be set when the LogVolume is created (it sizes the storage PVCs)"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogVolumeSpec {
    /// Database page size in bytes: a power of two from 4096 to 65536. Immutable.
    #[serde(default = "default_page_size")]
    #[x_kube(
        validation = Rule::new("self in [4096, 8192, 16384, 32768, 65536]").message("pageSize must be a power of two from 4096 to 65536"),
        validation = Rule::new("self == oldSelf").message("pageSize is immutable")
    )]
    pub page_size: u32,
    /// Size of one protection group (segment), e.g. `10Gi`; at least 1Gi. The volume grows one
    /// segment at a time. Immutable.
    #[serde(default = "default_segment_size")]
    #[x_kube(
        validation = Rule::new("isQuantity(string(self)) && quantity(string(self)).compareTo(quantity('1Gi')) >= 0").message("segmentSize must be a quantity of at least 1Gi (e.g. 10Gi)"),
        validation = Rule::new("self == oldSelf").message("segmentSize is immutable")
    )]
    pub segment_size: Quantity,
    /// The volume never grows past this size.
    #[serde(default = "default_max_size")]
    #[x_kube(validation = Rule::new("isQuantity(string(self))").message("maxSize must be a quantity (e.g. 1Ti)"))]
    pub max_size: Quantity,
    /// Read replicas (0-15).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self <= 15").message("replicas must be between 0 and 15"))]
    pub replicas: u32,
    /// How far back point-in-time restore can go, e.g. `24h`, `7d`, `1h30m`.
    #[serde(default = "default_retention")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+[smhd])+$')").message("retention must be a duration such as 30m, 24h or 7d"))]
    pub retention: String,
    /// Exactly three distinct availability zones; every segment has two copies in each.
    /// Immutable.
    #[serde(default = "default_zones")]
    #[x_kube(
        validation = Rule::new("size(self) == 3 && self.all(z, z != '') && self[0] != self[1] && self[0] != self[2] && self[1] != self[2]").message("zones must be exactly three distinct, non-empty zone names"),
        validation = Rule::new("self == oldSelf").message("zones are immutable")
    )]
    pub zones: Vec<String>,
    /// Sustained redo, in bytes per second, that one protection group must keep for the whole
    /// retention window, e.g. `1Mi`: storage PVCs are sized to hold the segment, the window's
    /// history at this rate (storage keeps at most twice the redo) and the node's free-space
    /// reserve. Without it PVCs are the segment plus a quarter (at least 1Gi) and the
    /// `RetentionSized` condition says what rate that holds. Immutable (a StatefulSet's volume
    /// claims cannot change; grow PVCs through a storage class that allows expansion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("isQuantity(string(self)) && quantity(string(self)).compareTo(quantity('0')) > 0").message("writeRate must be a positive quantity of bytes per second (e.g. 1Mi)"),
        validation = Rule::new("self == oldSelf").message("writeRate is immutable")
    )]
    pub write_rate: Option<Quantity>,
    /// The Secret clients log in with (type `kubernetes.io/basic-auth`: keys `username` and
    /// `password`), made by you; default: `<name>-app`, which the operator makes with user
    /// `app` and a random password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$') && size(self) <= 253").message("appSecret must be a Secret name (lower-case letters, digits, '-' and '.')"))]
    pub app_secret: Option<String>,
    /// Refuse PostgreSQL clients that do not use TLS (PostgreSQL's `hostssl`). Default: TLS is
    /// offered and plaintext clients are still let in (with SCRAM). `logdb up` always
    /// requires TLS unless started with `--insecure`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_tls: bool,
}

/// What the operator (or `logdb up`) last saw of the volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogVolumeStatus {
    /// Pending, Ready, Degraded, FailoverInProgress.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// The compute pod that writes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub writer: String,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub vdl: u64,
    /// Ready replicas of those asked for, e.g. `2/2`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replicas_ready: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaState>,
    /// The worst replica lag, e.g. `0.4ms`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lag: String,
    #[serde(default)]
    pub protection_groups: u32,
    /// Allocated size as a quantity, e.g. `20Gi`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub allocated: String,
    #[serde(default)]
    pub allocated_bytes: u64,
    #[serde(default)]
    pub used_bytes: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// A failover asked for by annotation, until the target serves as writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<PendingFailover>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A failover under way.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingFailover {
    /// The compute pod being promoted.
    pub target: String,
    /// The epoch the config store's failover set; the target's own ticket goes above it.
    pub epoch: u64,
    /// When it was asked for (RFC 3339).
    pub started_at: String,
}

/// One replica as the status reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaState {
    pub name: String,
    pub ready: bool,
    #[serde(default)]
    pub read_point: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<f64>,
}

fn default_page_size() -> u32 {
    8192
}
fn default_segment_size() -> Quantity {
    Quantity(format!("{}Gi", DEFAULT_SEGMENT_SIZE >> 30))
}
fn default_max_size() -> Quantity {
    Quantity(format!("{}Ti", DEFAULT_MAX_SIZE >> 40))
}
fn default_retention() -> String {
    "24h".into()
}
fn default_zones() -> Vec<String> {
    ["zone-a", "zone-b", "zone-c"].map(String::from).to_vec()
}

/// Where the spec will run: Kubernetes asks for segments of at least 1 GiB (a PVC per segment);
/// one machine is fine with a few MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Local,
    Kubernetes,
}

/// The smallest segment on Kubernetes.
pub const MIN_KUBERNETES_SEGMENT: u64 = 1 << 30;

impl LogVolumeSpec {
    /// The config store's view of this spec, after every check; the error names the field and why.
    pub fn volume_spec(&self, target: Target) -> Result<VolumeSpec, String> {
        let segment_size = parse_quantity("spec.segmentSize", &self.segment_size.0)?;
        let spec = VolumeSpec {
            page_size: self.page_size,
            segment_size,
            max_size: parse_quantity("spec.maxSize", &self.max_size.0)?,
            replicas: self.replicas,
            retention_secs: parse_duration("spec.retention", &self.retention)?,
            zones: self.zones.clone(),
            pool: String::new(),
        };
        spec.validate()?;
        self.write_rate()?;
        if target == Target::Kubernetes && segment_size < MIN_KUBERNETES_SEGMENT {
            return Err(format!(
                "spec.segmentSize: {} is below the 1Gi minimum on Kubernetes",
                self.segment_size.0
            ));
        }
        Ok(spec)
    }
}

impl LogVolumeSpec {
    /// `spec.writeRate` in bytes per second, if stated.
    pub fn write_rate(&self) -> Result<Option<u64>, String> {
        let Some(q) = &self.write_rate else {
            return Ok(None);
        };
        match parse_quantity("spec.writeRate", &q.0)? {
            0 => Err("spec.writeRate: must be above 0 bytes per second".into()),
            rate => Ok(Some(rate)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LogVolumeSpec {
        serde_yaml::from_str("{}").unwrap()
    }

    #[test]
    fn defaults_are_a_valid_kubernetes_volume() {
        let s = spec().volume_spec(Target::Kubernetes).unwrap();
        assert_eq!(s.page_size, 8192);
        assert_eq!(s.segment_size, 10 << 30);
        assert_eq!(s.max_size, 128 << 40);
        assert_eq!(s.retention_secs, 86400);
        assert_eq!(s.zones, ["zone-a", "zone-b", "zone-c"]);
    }

    #[test]
    fn small_segments_are_for_one_machine_only() {
        let mut s = spec();
        s.segment_size = Quantity("64Mi".into());
        assert_eq!(s.volume_spec(Target::Local).unwrap().segment_size, 64 << 20);
        assert_eq!(
            s.volume_spec(Target::Kubernetes).unwrap_err(),
            "spec.segmentSize: 64Mi is below the 1Gi minimum on Kubernetes"
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases: [(&str, &str); 8] = [
            ("writeRate: fast", "spec.writeRate: \"fast\""),
            ("writeRate: \"0\"", "spec.writeRate: must be above 0"),
            (
                "pageSize: 5000",
                "spec.pageSize: 5000 is not a power of two",
            ),
            ("segmentSize: 10Qi", "spec.segmentSize: \"10Qi\""),
            ("retention: soon", "spec.retention: \"soon\""),
            (
                "replicas: 16",
                "spec.replicas: 16 is above the maximum of 15",
            ),
            ("zones: [a, a, b]", "spec.zones"),
            ("maxSize: 1Mi", "spec.maxSize"),
        ];
        for (yaml, want) in cases {
            let s: LogVolumeSpec = serde_yaml::from_str(yaml).unwrap();
            let err = s.volume_spec(Target::Local).unwrap_err();
            assert!(err.starts_with(want), "{yaml}: {err}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_yaml::from_str::<LogVolumeSpec>("pagesize: 8192")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `pagesize`"), "{err}");
    }
}
