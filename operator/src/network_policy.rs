//! Who may reach a LogVolume's pods: one NetworkPolicy for its storage pods and one for its
//! compute pods, so that only the volume's own pods (and the operator, which runs the config
//! store and the controller) reach the storage gRPC port and the compute nodes' record feed,
//! while clients reach the PostgreSQL port (through `<name>-rw`/`<name>-ro`) and Prometheus the
//! metrics ports. Egress is left open: the pods must reach the config store and DNS, and what
//! they send is already authenticated by epoch tickets.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::objects::{
    owned_meta, selector, COMPUTE_METRICS_PORT, FEED_PORT, PG_PORT, STORAGE_METRICS_PORT,
    STORAGE_PORT,
};
use crate::spec::LogVolume;

/// The label the operator's own pods carry (the chart sets it).
pub const OPERATOR_LABEL: (&str, &str) = ("app.kubernetes.io/name", "logdb-operator");

fn pods(labels: BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(labels),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn operator(namespace: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                namespace.to_string(),
            )])),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                OPERATOR_LABEL.0.to_string(),
                OPERATOR_LABEL.1.to_string(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ports(ports: &[i32]) -> Option<Vec<NetworkPolicyPort>> {
    Some(
        ports
            .iter()
            .map(|p| NetworkPolicyPort {
                port: Some(IntOrString::Int(*p)),
                protocol: Some("TCP".into()),
                ..Default::default()
            })
            .collect(),
    )
}

/// `from`: `None` is every source.
fn rule(from: Option<Vec<NetworkPolicyPeer>>, to: &[i32]) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from,
        ports: ports(to),
    }
}

fn policy(
    lv: &LogVolume,
    component: &str,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    let name = lv.metadata.name.clone().unwrap_or_default();
    NetworkPolicy {
        metadata: owned_meta(lv, format!("{name}-{component}"), component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(&name, component)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..Default::default()
        }),
    }
}

/// The two policies of `lv`; `operator_namespace` is where the operator's pods run.
pub fn policies(lv: &LogVolume, operator_namespace: &str) -> Vec<NetworkPolicy> {
    let name = lv.metadata.name.clone().unwrap_or_default();
    let own = |component: &str| pods(selector(&name, component));
    vec![
        policy(
            lv,
            "storage",
            vec![
                rule(
                    Some(vec![
                        own("compute"),
                        own("storage"),
                        operator(operator_namespace),
                    ]),
                    &[STORAGE_PORT],
                ),
                rule(None, &[STORAGE_METRICS_PORT]),
            ],
        ),
        policy(
            lv,
            "compute",
            vec![
                rule(None, &[PG_PORT, COMPUTE_METRICS_PORT]),
                rule(
                    Some(vec![own("compute"), operator(operator_namespace)]),
                    &[FEED_PORT],
                ),
            ],
        ),
    ]
}
