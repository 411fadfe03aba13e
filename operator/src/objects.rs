//! What a LogVolume becomes on Kubernetes (DESIGN.md §9), as pure functions of the spec: six
//! storage StatefulSets (two per zone, each pinned to its zone; ordinal k holds PG k's segment,
//! so growth scales all six by one), the compute StatefulSet (writer + replicas; the config store
//! decides who writes), headless Services for both, `<name>-rw` and `<name>-ro`, disruption
//! budgets, and a ConfigMap — each owned by the LogVolume. The controller applies them; tests
//! compare them with golden YAML and CI checks each against the Kubernetes schemas.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, KeyToPath,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::secrets::{self, PEER_MOUNT, TLS_MOUNT};
use crate::spec::{LogVolume, Target};

/// Ports inside the pods.
pub const STORAGE_PORT: i32 = 7600;
pub const STORAGE_METRICS_PORT: i32 = 9600;
pub const PG_PORT: i32 = 5432;
pub const FEED_PORT: i32 = 7500;
pub const COMPUTE_METRICS_PORT: i32 = 9187;
/// The label naming a compute pod's role (set by the controller): `writer` or `replica`.
pub const ROLE_LABEL: &str = "logdb.io/role";

/// How the operator was installed (from its own flags).
#[derive(Clone, Debug)]
pub struct Settings {
    pub image: String,
    /// The config store members (the operator's own pods).
    pub config_store: Vec<String>,
    pub storage_class: Option<String>,
    /// Where the operator's pods run (its NetworkPolicy peers).
    pub operator_namespace: String,
}

/// Everything one LogVolume owns.
#[derive(Clone, Debug, Serialize)]
pub struct Desired {
    pub config: ConfigMap,
    pub storage: Vec<StatefulSet>,
    pub compute: StatefulSet,
    pub services: Vec<Service>,
    pub budgets: Vec<PodDisruptionBudget>,
    pub policies: Vec<NetworkPolicy>,
}

impl Desired {
    /// Every object as a YAML stream (golden files, `logdb render`).
    pub fn to_yaml(&self) -> String {
        let mut docs: Vec<String> = vec![doc(&self.config)];
        docs.extend(self.storage.iter().map(doc));
        docs.push(doc(&self.compute));
        docs.extend(self.services.iter().map(doc));
        docs.extend(self.budgets.iter().map(doc));
        docs.extend(self.policies.iter().map(doc));
        docs.join("---\n")
    }
}

fn doc<T: Serialize + k8s_openapi::Resource>(o: &T) -> String {
    let mut v = serde_json::to_value(o).expect("object serializes");
    v["apiVersion"] = T::API_VERSION.into();
    v["kind"] = T::KIND.into();
    serde_yaml::to_string(&v).expect("object as YAML")
}

/// The six storage node names of a volume: zone letter and number, `a1` .. `c2`.
pub fn storage_ids() -> [(&'static str, usize); 6] {
    [
        ("a1", 0),
        ("a2", 0),
        ("b1", 1),
        ("b2", 1),
        ("c1", 2),
        ("c2", 2),
    ]
}

fn labels(lv: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "logdb".into()),
        ("app.kubernetes.io/instance".into(), lv.into()),
        ("app.kubernetes.io/component".into(), component.into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "logdb-operator".into(),
        ),
    ])
}

pub(crate) fn selector(lv: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".into(), lv.into()),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Non-root, read-only root file system, no capabilities.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        fs_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        ..Default::default()
    }
}

fn tcp_probe(port: &str) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(port.into()),
            ..Default::default()
        }),
        period_seconds: Some(5),
        ..Default::default()
    }
}

/// The mount of the pods' peer certificates (mutual TLS between the parts).
fn peer_mount() -> VolumeMount {
    VolumeMount {
        name: "peer-tls".into(),
        mount_path: PEER_MOUNT.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// The peer Secret as `part` (`storage` or `compute`) mounts it: the CA certificate and that
/// part's own certificate and key only (a storage pod never holds a compute key).
fn peer_volume(lv: &LogVolume, part: &str) -> Volume {
    let item = |key: String| KeyToPath {
        path: key.clone(),
        key,
        ..Default::default()
    };
    Volume {
        name: "peer-tls".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secrets::peer_secret_name(lv)),
            items: Some(vec![
                item("ca.crt".into()),
                item(format!("{part}.crt")),
                item(format!("{part}.key")),
            ]),
            // Readable by the pod's group (fsGroup) only: the keys are in it.
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What every object of `lv` carries: its name, namespace, labels, and `lv` as its owner (it
/// goes when the LogVolume goes).
pub fn owned_meta(lv: &LogVolume, object: String, component: &str) -> ObjectMeta {
    let name = lv.metadata.name.clone().unwrap_or_default();
    ObjectMeta {
        name: Some(object),
        namespace: lv.metadata.namespace.clone(),
        labels: Some(labels(&name, component)),
        owner_references: Some(vec![OwnerReference {
            api_version: "logdb.io/v1alpha1".into(),
            kind: "LogVolume".into(),
            name,
            uid: lv.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..Default::default()
    }
}

/// The objects of `lv` with `pgs` protection groups (each storage StatefulSet has that many pods).
pub fn desired(lv: &LogVolume, settings: &Settings, pgs: u32) -> Result<Desired, String> {
    let name = lv.metadata.name.clone().ok_or("metadata.name: missing")?;
    let ns = lv.metadata.namespace.clone();
    let spec = lv.spec.volume_spec(Target::Kubernetes)?;
    let pvc = crate::sizing::pvc_plan(
        spec.segment_size,
        spec.retention_secs,
        lv.spec.write_rate()?,
    );
    let meta = |object: String, component: &str| owned_meta(lv, object, component);
    let config_store = settings.config_store.join(",");
    let storage_svc = format!("{name}-storage");
    let compute_svc = format!("{name}-compute");
    let dns = |svc: &str| match &ns {
        Some(ns) => format!("$(POD_NAME).{svc}.{ns}.svc"),
        None => format!("$(POD_NAME).{svc}"),
    };

    let config = ConfigMap {
        metadata: meta(format!("{name}-config"), "config"),
        data: Some(BTreeMap::from([
            ("volume".into(), name.clone()),
            ("config-store".into(), config_store.clone()),
            (
                "spec.json".into(),
                serde_json::to_string(&lv.spec).expect("spec serializes"),
            ),
        ])),
        ..Default::default()
    };

    let storage = storage_ids()
        .iter()
        .map(|(id, zone_index)| {
            let zone = spec.zones[*zone_index].clone();
            let set = format!("{name}-storage-{id}");
            let mut pod_labels = labels(&name, "storage");
            pod_labels.insert("logdb.io/zone".into(), zone.clone());
            pod_labels.insert("logdb.io/storage-set".into(), id.to_string());
            let mut sel = selector(&name, "storage");
            sel.insert("logdb.io/storage-set".into(), id.to_string());
            let container = Container {
                name: "storage".into(),
                image: Some(settings.image.clone()),
                command: Some(vec!["logdb-storage".into()]),
                args: Some(vec![
                    format!("--listen=0.0.0.0:{STORAGE_PORT}"),
                    format!("--metrics-listen=0.0.0.0:{STORAGE_METRICS_PORT}"),
                    format!("--advertise={}:{STORAGE_PORT}", dns(&storage_svc)),
                    "--data-dir=/data".into(),
                    "--node-id=$(POD_NAMESPACE)-$(POD_NAME)".into(),
                    format!("--zone={zone}"),
                    format!("--config-store={config_store}"),
                    format!("--default-retention-secs={}", spec.retention_secs),
                    format!("--pool={}", crate::controller::volume_id(lv)),
                    format!("--peer-ca={PEER_MOUNT}/ca.crt"),
                    format!("--peer-cert={PEER_MOUNT}/storage.crt"),
                    format!("--peer-key={PEER_MOUNT}/storage.key"),
                ]),
                env: Some(vec![
                    env_field("POD_NAME", "metadata.name"),
                    env_field("POD_NAMESPACE", "metadata.namespace"),
                ]),
                ports: Some(vec![
                    port("grpc", STORAGE_PORT),
                    port("metrics", STORAGE_METRICS_PORT),
                ]),
                readiness_probe: Some(tcp_probe("grpc")),
                volume_mounts: Some(vec![
                    VolumeMount {
                        name: "data".into(),
                        mount_path: "/data".into(),
                        ..Default::default()
                    },
                    peer_mount(),
                ]),
                security_context: Some(container_security()),
                ..Default::default()
            };
            let affinity = Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "topology.kubernetes.io/zone".into(),
                                operator: "In".into(),
                                values: Some(vec![zone.clone()]),
                            }]),
                            ..Default::default()
                        }],
                    }),
                    ..Default::default()
                }),
                // The two copies of a PG in one zone (same ordinal, the other set) never share
                // a node.
                pod_anti_affinity: Some(PodAntiAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![
                        PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_labels: Some(BTreeMap::from([
                                    ("app.kubernetes.io/instance".into(), name.clone()),
                                    ("app.kubernetes.io/component".into(), "storage".into()),
                                    ("logdb.io/zone".into(), zone.clone()),
                                ])),
                                match_expressions: Some(vec![LabelSelectorRequirement {
                                    key: "logdb.io/storage-set".into(),
                                    operator: "NotIn".into(),
                                    values: Some(vec![id.to_string()]),
                                }]),
                            }),
                            match_label_keys: Some(vec!["apps.kubernetes.io/pod-index".into()]),
                            topology_key: "kubernetes.io/hostname".into(),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mut pvc_spec = PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".into(),
                        Quantity(pvc.bytes().to_string()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            };
            pvc_spec.storage_class_name = settings.storage_class.clone();
            StatefulSet {
                metadata: meta(set.clone(), "storage"),
                spec: StatefulSetSpec {
                    service_name: Some(storage_svc.clone()),
                    replicas: Some(pgs as i32),
                    pod_management_policy: Some("Parallel".into()),
                    selector: LabelSelector {
                        match_labels: Some(sel),
                        ..Default::default()
                    },
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(pod_labels),
                            ..Default::default()
                        }),
                        spec: Some(PodSpec {
                            containers: vec![container],
                            volumes: Some(vec![peer_volume(lv, "storage")]),
                            affinity: Some(affinity),
                            security_context: Some(pod_security()),
                            termination_grace_period_seconds: Some(30),
                            ..Default::default()
                        }),
                    },
                    volume_claim_templates: Some(vec![PersistentVolumeClaim {
                        metadata: ObjectMeta {
                            name: Some("data".into()),
                            ..Default::default()
                        },
                        spec: Some(pvc_spec),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                ..Default::default()
            }
        })
        .collect();

    let mut compute_args = vec![
        "--role=auto".into(),
        format!("--config-store={config_store}"),
        format!("--volume={}", crate::controller::volume_id(lv)),
        "--writer-id=$(POD_NAME)".into(),
        format!("--listen=0.0.0.0:{PG_PORT}"),
        format!("--metrics-listen=0.0.0.0:{COMPUTE_METRICS_PORT}"),
        format!("--replication-listen=0.0.0.0:{FEED_PORT}"),
        format!("--advertise-host={}", dns(&compute_svc)),
        format!("--tls-cert={TLS_MOUNT}/tls.crt"),
        format!("--tls-key={TLS_MOUNT}/tls.key"),
        format!("--peer-ca={PEER_MOUNT}/ca.crt"),
        format!("--peer-cert={PEER_MOUNT}/compute.crt"),
        format!("--peer-key={PEER_MOUNT}/compute.key"),
    ];
    if lv.spec.require_tls {
        compute_args.push("--require-tls".into());
    }
    let compute_container = Container {
        name: "compute".into(),
        image: Some(settings.image.clone()),
        command: Some(vec!["logdb-compute".into()]),
        args: Some(compute_args),
        env: Some(vec![
            env_field("POD_NAME", "metadata.name"),
            env_secret("LOGDB_USER", &secrets::app_secret_name(lv), "username"),
            env_secret("LOGDB_PASSWORD", &secrets::app_secret_name(lv), "password"),
        ]),
        ports: Some(vec![
            port("postgres", PG_PORT),
            port("feed", FEED_PORT),
            port("metrics", COMPUTE_METRICS_PORT),
        ]),
        readiness_probe: Some(tcp_probe("postgres")),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            },
            VolumeMount {
                name: "tls".into(),
                mount_path: TLS_MOUNT.into(),
                read_only: Some(true),
                ..Default::default()
            },
            peer_mount(),
        ]),
        security_context: Some(container_security()),
        ..Default::default()
    };
    let compute = StatefulSet {
        metadata: meta(compute_svc.clone(), "compute"),
        spec: StatefulSetSpec {
            service_name: Some(compute_svc.clone()),
            replicas: Some(1 + spec.replicas as i32),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector(&name, "compute")),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name, "compute")),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![compute_container],
                    volumes: Some(vec![
                        Volume {
                            name: "tmp".into(),
                            empty_dir: Some(Default::default()),
                            ..Default::default()
                        },
                        Volume {
                            name: "tls".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(secrets::server_secret_name(lv)),
                                // Readable by the pod's group (fsGroup) only: the key is in it.
                                default_mode: Some(0o440),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        peer_volume(lv, "compute"),
                    ]),
                    security_context: Some(pod_security()),
                    termination_grace_period_seconds: Some(30),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    };

    let service = |svc: String,
                   component: &str,
                   sel: BTreeMap<String, String>,
                   headless: bool,
                   ports: Vec<(&str, i32)>| Service {
        metadata: meta(svc, component),
        spec: Some(ServiceSpec {
            cluster_ip: headless.then(|| "None".to_string()),
            publish_not_ready_addresses: headless.then_some(true),
            selector: Some(sel),
            ports: Some(
                ports
                    .into_iter()
                    .map(|(n, p)| ServicePort {
                        name: Some(n.into()),
                        port: p,
                        target_port: Some(IntOrString::String(n.into())),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let with = |mut m: BTreeMap<String, String>, k: &str, v: &str| {
        m.insert(k.into(), v.into());
        m
    };
    let services = vec![
        service(
            storage_svc.clone(),
            "storage",
            selector(&name, "storage"),
            true,
            vec![("grpc", STORAGE_PORT), ("metrics", STORAGE_METRICS_PORT)],
        ),
        service(
            compute_svc.clone(),
            "compute",
            selector(&name, "compute"),
            true,
            vec![
                ("postgres", PG_PORT),
                ("feed", FEED_PORT),
                ("metrics", COMPUTE_METRICS_PORT),
            ],
        ),
        service(
            format!("{name}-rw"),
            "compute",
            with(selector(&name, "compute"), ROLE_LABEL, "writer"),
            false,
            vec![("postgres", PG_PORT)],
        ),
        service(
            format!("{name}-ro"),
            "compute",
            with(selector(&name, "compute"), ROLE_LABEL, "replica"),
            false,
            vec![("postgres", PG_PORT)],
        ),
    ];
    // One storage pod at a time may be disrupted (5 of 6 left: a write quorum even if another
    // fails); one compute pod at a time.
    let budget = |component: &str| PodDisruptionBudget {
        metadata: meta(format!("{name}-{component}"), component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(&name, component)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(Desired {
        config,
        storage,
        compute,
        services,
        budgets: vec![budget("storage"), budget("compute")],
        policies: crate::network_policy::policies(lv, &settings.operator_namespace),
    })
}
