//! `GET /v1/openapi.json`: the API's description (OpenAPI 3.1), generated from the
//! handlers' `#[utoipa::path]` annotations and the wire types. The CA's router takes
//! each operation's path and method from those annotations, so nothing routed goes
//! undescribed; this checks the other direction from outside, against a running CA:
//! every operation the description names is routed (never the router's "route not
//! found" or 405), each says what it answers, and every schema it refers to is in it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::Server;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_description_names_what_is_routed_and_nothing_else() {
    let server = Server::start().await;
    let (status, doc) = server.get_json(None, "/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);

    let mut operations = 0;
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method: Method = method.to_uppercase().parse().unwrap();
            operations += 1;
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}: no responses");
            assert!(op["tags"].as_array().is_some_and(|t| !t.is_empty()), "{method} {path}: no tag");
            // Path parameters get a harmless value; no credentials, an empty JSON body.
            let concrete = path.replace('{', "p").replace('}', "");
            let body = (method != Method::GET).then(|| json!({}));
            let resp = server.request(method.clone(), None, &concrete, body.as_ref()).await;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is described but not routed");
            assert!(!text.contains("route not found"), "{method} {path} is described but not routed: {text}");
        }
    }
    assert!(operations >= 60, "only {operations} operations described");

    // Every `$ref` resolves inside the document.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(schemas.contains_key(name), "{r} is referred to but not described");
    }
    // The credentials are described, and no example carries a secret-looking value.
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for scheme in ["bearer", "cookie", "service"] {
        assert!(schemes.contains_key(scheme), "{scheme} missing: {schemes:?}");
    }
    let text = doc.to_string();
    for secret_prefix in ["pcs_", "pct_", "pce_", "pcd_"] {
        assert!(!text.contains(&format!("\"{secret_prefix}")), "a {secret_prefix} value in the description");
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_refs(i, out)),
        _ => {}
    }
}
