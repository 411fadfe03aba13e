//! Every object logdb puts on a cluster parses into its k8s-openapi type and survives the round
//! trip unchanged (so no field is misspelled or misplaced): the objects `objects::desired` makes,
//! the CRD, and — when `LOGDB_RENDERED_DIR` names a directory of YAML files, as
//! `scripts/check-kubernetes.sh` does with `helm template`'s output — every object of the chart.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Value {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", doc["metadata"]["name"]));
    serde_json::to_value(typed).unwrap()
}

/// `b` holds everything `a` holds (nulls aside) and nothing else.
fn same(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                if !v.is_null() {
                    same(v, y.get(k).unwrap_or(&Value::Null), &format!("{path}.{k}"));
                }
            }
            for (k, v) in y {
                // Embedded objects (PVC templates) gain their type fields; nothing else may appear.
                let type_meta = k == "apiVersion" || k == "kind";
                if !v.is_null() && !x.contains_key(k) && !type_meta {
                    panic!("{path}.{k} appeared in the round trip");
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                same(p, q, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(x), Value::Number(y)) => assert_eq!(x.as_f64(), y.as_f64(), "{path}"),
        _ => assert_eq!(a, b, "{path} is lost or changed by its type"),
    }
}

fn check(yaml: &str) -> usize {
    let mut n = 0;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let doc: Value = serde::Deserialize::deserialize(doc).unwrap();
        if doc.is_null() {
            continue;
        }
        let mut typed = match doc["kind"].as_str().unwrap_or_default() {
            "StatefulSet" => round_trip::<StatefulSet>(&doc),
            "Service" => round_trip::<Service>(&doc),
            "ConfigMap" => round_trip::<ConfigMap>(&doc),
            "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(&doc),
            "ServiceAccount" => round_trip::<ServiceAccount>(&doc),
            "ClusterRole" => round_trip::<ClusterRole>(&doc),
            "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(&doc),
            "Role" => round_trip::<Role>(&doc),
            "RoleBinding" => round_trip::<RoleBinding>(&doc),
            "NetworkPolicy" => round_trip::<NetworkPolicy>(&doc),
            "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(&doc),
            other => panic!("an object of kind {other:?} has no check here"),
        };
        typed["apiVersion"] = doc["apiVersion"].clone();
        typed["kind"] = doc["kind"].clone();
        same(&doc, &typed, doc["kind"].as_str().unwrap());
        n += 1;
    }
    n
}

#[test]
fn the_operators_objects_and_the_crd_round_trip() {
    let lv = logdb_operator::manifest::parse(
        include_str!("../../examples/logvolume.yaml"),
        "example",
        logdb_operator::spec::Target::Kubernetes,
    )
    .unwrap();
    let settings = logdb_operator::objects::Settings {
        image: "x".into(),
        config_store: vec!["a:7400".into()],
        storage_class: Some("fast".into()),
        operator_namespace: "logdb-system".into(),
    };
    let d = logdb_operator::objects::desired(&lv, &settings, 2).unwrap();
    assert_eq!(check(&d.to_yaml()), 16);
    assert_eq!(check(&logdb_operator::crd::yaml()), 1);
}

#[test]
fn rendered_chart_objects_round_trip() {
    let Some(dir) = std::env::var_os("LOGDB_RENDERED_DIR") else {
        // Without helm output, check the chart's CRD copy at least.
        let crd = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/logdb/crds/logvolume.yaml"
        ))
        .unwrap();
        assert_eq!(check(&crd), 1);
        return;
    };
    let mut n = 0;
    for f in std::fs::read_dir(dir).unwrap() {
        n += check(&std::fs::read_to_string(f.unwrap().path()).unwrap());
    }
    assert!(n >= 6, "only {n} objects rendered");
}

#[test]
#[should_panic(expected = "spec.clusterIp is lost or changed by its type")]
fn a_misspelled_field_is_caught() {
    check("apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  clusterIp: None\n");
}
