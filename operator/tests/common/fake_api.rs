//! An in-memory Kubernetes API server behind a real `kube::Client` (a tower service instead of
//! HTTP): objects stored as JSON by path; GET of objects and lists (label selectors with `=`),
//! POST, server-side apply (creates or merges), JSON merge patches of objects and of `/status`,
//! resource versions and uids, and watches that end without events (the watcher lists again).
//! Enough for the controller's calls; every request is recorded.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

#[derive(Default)]
pub struct Store {
    /// Object path (`/api/v1/namespaces/ns/services/x`) → object.
    pub objects: BTreeMap<String, Value>,
    pub requests: Vec<String>,
    version: u64,
    /// Every change, for watches: (resource version, event type, path, object).
    events: Vec<(u64, &'static str, String, Value)>,
}

impl Store {
    fn record(&mut self, kind: &'static str, path: &str, obj: &Value) {
        let v = self.version;
        self.events.push((v, kind, path.to_string(), obj.clone()));
    }
}

/// Is the object at `path` in the collection `key` (a namespaced collection, or all namespaces
/// for `/apis/g/v/things`)?
fn in_collection(key: &str, path: &str) -> bool {
    if key.contains("/namespaces/") {
        let prefix = format!("{key}/");
        return path.starts_with(&prefix) && !path[prefix.len()..].contains('/');
    }
    let (group, resource) = key.rsplit_once('/').unwrap_or(("", ""));
    let Some(rest) = path.strip_prefix(&format!("{group}/namespaces/")) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    parts.len() == 3 && parts[1] == resource
}

/// Whether `key` names a collection (`/api/v1/namespaces/ns/secrets`), not one object
/// (`/api/v1/namespaces/ns/secrets/orders-server-tls`), by its shape.
fn is_collection(key: &str) -> bool {
    let parts: Vec<&str> = key.trim_start_matches('/').split('/').collect();
    let namespaced = parts.contains(&"namespaces");
    match parts.first() {
        Some(&"api") => parts.len() == if namespaced { 5 } else { 3 },
        Some(&"apis") => parts.len() == if namespaced { 6 } else { 4 },
        _ => false,
    }
}

#[derive(Clone, Default)]
pub struct FakeApi {
    pub store: Arc<Mutex<Store>>,
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "reason": reason, "message": message, "code": code.as_u16()});
    let mut r = Response::new(Body::from(serde_json::to_vec(&body).unwrap()));
    *r.status_mut() = code;
    r
}

fn ok(v: &Value) -> Response<Body> {
    Response::new(Body::from(serde_json::to_vec(v).unwrap()))
}

/// Does `labels` satisfy `k=v,k2=v2`?
fn selected(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

impl FakeApi {
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        kube::Client::new(svc, "default")
    }

    /// Stores an object as a client's create would (with a uid and resource version).
    pub fn put(&self, path: &str, obj: Value) {
        let mut s = self.store.lock().unwrap();
        s.version += 1;
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = s.version.to_string().into();
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = format!("uid-{}", s.version).into();
        }
        let kind = if s.objects.contains_key(path) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.record(kind, path, &obj);
        s.objects.insert(path.to_string(), obj);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.store.lock().unwrap().objects.get(path).cloned()
    }

    /// Objects whose path starts with `prefix` (a collection).
    pub fn list(&self, prefix: &str) -> Vec<Value> {
        let s = self.store.lock().unwrap();
        s.objects
            .iter()
            .filter(|(p, _)| p.starts_with(prefix) && !p[prefix.len()..].contains('/'))
            .map(|(_, v)| v.clone())
            .collect()
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or(Value::Null)
        };
        if method == Method::GET && (query.contains("watch=true") || query.contains("watch=1")) {
            // The changes since the caller's resource version, then the end of the watch (as a
            // server-side timeout); when there are none, after a pause, so nobody spins.
            let since: u64 = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("resourceVersion="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let lines = |s: &Store| -> Vec<u8> {
                let mut out = Vec::new();
                for (v, kind, p, obj) in &s.events {
                    if *v > since && in_collection(&path, p) {
                        out.extend(
                            serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap(),
                        );
                        out.push(b'\n');
                    }
                }
                out
            };
            let body = lines(&self.store.lock().unwrap());
            if body.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            return Response::new(Body::from(body));
        }
        let mut s = self.store.lock().unwrap();
        s.requests.push(format!("{method} {path}"));
        let (key, sub) = match path.strip_suffix("/status") {
            Some(k) => (k.to_string(), true),
            None => (path.clone(), false),
        };
        match method {
            Method::GET if s.objects.contains_key(&key) => ok(&s.objects[&key]),
            Method::GET => {
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|(p, _)| in_collection(&key, p))
                    .map(|(_, v)| v.clone())
                    .filter(|v| {
                        let sel = query
                            .split('&')
                            .find_map(|kv| kv.strip_prefix("labelSelector="))
                            .map(|s| {
                                s.replace("%3D", "=")
                                    .replace("%2C", ",")
                                    .replace("%2F", "/")
                            })
                            .unwrap_or_default();
                        selected(v, &sel)
                    })
                    .collect();
                if items.is_empty() && !is_collection(&key) {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{key} not found"),
                    );
                }
                let version = s.version.to_string();
                ok(
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": version}, "items": items}),
                )
            }
            Method::POST => {
                s.version += 1;
                let mut obj = body;
                let name = obj["metadata"]["name"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| {
                        format!(
                            "{}{}",
                            obj["metadata"]["generateName"].as_str().unwrap_or("obj-"),
                            s.version
                        )
                    });
                let path = format!("{key}/{name}");
                // As the API server: a create of a name that exists is a conflict, not an
                // overwrite.
                if s.objects.contains_key(&path) {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{path} already exists"),
                    );
                }
                obj["metadata"]["name"] = name.clone().into();
                obj["metadata"]["resourceVersion"] = s.version.to_string().into();
                obj["metadata"]["uid"] = format!("uid-{}", s.version).into();
                s.record("ADDED", &path, &obj);
                s.objects.insert(path, obj.clone());
                ok(&obj)
            }
            Method::PATCH => {
                s.version += 1;
                let version = s.version;
                let apply = content_type.starts_with("application/apply-patch");
                let existing = s.objects.get(&key).cloned();
                let mut obj = match (existing, apply) {
                    (Some(o), _) => o,
                    (None, true) => json!({"metadata": {"uid": format!("uid-{version}")}}),
                    (None, false) => {
                        return status(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            format!("{key} not found"),
                        )
                    }
                };
                if sub {
                    merge(&mut obj["status"], &body["status"]);
                } else if apply {
                    // Server-side apply by the only manager: its fields replace ours.
                    for field in ["spec", "data"] {
                        if !body[field].is_null() {
                            obj[field] = body[field].clone();
                        }
                    }
                    let mut b = body.clone();
                    if let Some(m) = b.as_object_mut() {
                        m.remove("spec");
                        m.remove("data");
                    }
                    merge(&mut obj, &b);
                } else {
                    merge(&mut obj, &body);
                }
                obj["metadata"]["resourceVersion"] = version.to_string().into();
                let kind = if s.objects.contains_key(&key) {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                s.record(kind, &key, &obj);
                s.objects.insert(key, obj.clone());
                ok(&obj)
            }
            Method::DELETE => match s.objects.remove(&key) {
                Some(o) => {
                    s.version += 1;
                    s.record("DELETED", &key, &o);
                    ok(&o)
                }
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{key} not found"),
                ),
            },
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} {path}"),
            ),
        }
    }
}
