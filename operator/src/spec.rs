//! The `LogVolume` resource: the one spec a user writes, whether they `kubectl apply` it or hand
//! it to `logdb up`. The CRD is generated from these types; the same checks run in both places,
//! with the same messages, by mapping the spec onto the config store's [`VolumeSpec`].

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use logdb_config_store::model::{VolumeSpec, DEFAULT_MAX_SIZE, DEFAULT_SEGMENT_SIZE};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{parse_duration, parse_quantity};

/// A logdb volume: one database on six storage segments per protection group, a writer and up to
/// 15 read replicas.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "logdb.io",
    version = "v1alpha1",
    kind = "LogVolume",
    namespaced,
    shortname = "lv",
    status = "LogVolumeStatus"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogVolumeSpec {
    /// Database page size in bytes: a power of two from 4096 to 65536. Immutable.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Size of one protection group (segment), e.g. `10Gi`. The volume grows one segment at a time.
    #[serde(default = "default_segment_size")]
    pub segment_size: Quantity,
    /// The volume never grows past this size.
    #[serde(default = "default_max_size")]
    pub max_size: Quantity,
    /// Read replicas (0-15).
    #[serde(default)]
    pub replicas: u32,
    /// How far back point-in-time restore can go, e.g. `24h`, `7d`.
    #[serde(default = "default_retention")]
    pub retention: String,
    /// Exactly three distinct availability zones; every segment has two copies in each.
    #[serde(default = "default_zones")]
    pub zones: Vec<String>,
}

/// What the operator (or `logdb up`) last saw of the volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogVolumeStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub writer: String,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub vdl: u64,
    #[serde(default)]
    pub protection_groups: u32,
    #[serde(default)]
    pub allocated_bytes: u64,
    #[serde(default)]
    pub used_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
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
        };
        spec.validate()?;
        if target == Target::Kubernetes && segment_size < MIN_KUBERNETES_SEGMENT {
            return Err(format!(
                "spec.segmentSize: {} is below the 1Gi minimum on Kubernetes",
                self.segment_size.0
            ));
        }
        Ok(spec)
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
        let cases: [(&str, &str); 6] = [
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
