//! Drift between `api/openapi.yaml` and the service fails here:
//! - the document's operations are exactly [`ROUTES`] (path, method, operation id, security,
//!   least role, path and query parameters), and the issue's endpoint table is in both;
//! - every schema compiles; the query parameters a route documents are the ones it accepts;
//! - `responses`: real answers of every operation validate against the document.

mod responses;

use std::collections::BTreeSet;

use serde_json::Value;

use super::OPENAPI_YAML;
use crate::auth::Access;
use crate::routes::{ROUTES, Verb};
use crate::testkit::{BOOTSTRAP, TestApp};

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The document as JSON.
pub(super) fn doc() -> Value {
    serde_yaml::from_str(OPENAPI_YAML).expect("openapi.yaml parses")
}

/// Follows a local `$ref` (repeatedly).
pub(super) fn deref<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let pointer = r.strip_prefix('#').expect("only local refs");
        v = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    v
}

/// A validator for `schema` (which may `$ref` into the document's components).
pub(super) fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    if let Value::Object(map) = &mut root {
        map.insert("components".into(), doc["components"].clone());
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"))
}

/// The parameters of an operation: path-level and operation-level, resolved.
fn parameters<'a>(doc: &'a Value, path: &str, method: &str) -> Vec<&'a Value> {
    let item = &doc["paths"][path];
    [&item["parameters"], &item[method]["parameters"]]
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .map(|p| deref(doc, p))
        .collect()
}

fn names_in<'a>(params: &[&'a Value], location: &str) -> BTreeSet<&'a str> {
    params
        .iter()
        .filter(|p| p["in"] == location)
        .map(|p| p["name"].as_str().expect("parameter name"))
        .collect()
}

#[test]
fn the_document_is_openapi_3_1() {
    let d = doc();
    assert_eq!(d["openapi"], "3.1.0");
    assert!(d["components"]["securitySchemes"]["bearerAuth"].is_object());
}

#[test]
fn documented_operations_are_exactly_the_route_table() {
    let d = doc();
    let mut documented = BTreeSet::new();
    for (path, item) in d["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(*method).is_some() {
                documented.insert((method.to_string(), path.clone()));
            }
        }
    }
    let routed: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| (r.verb.as_str().to_owned(), r.path.to_owned()))
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routed, not in openapi.yaml: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "in openapi.yaml, not routed: {unrouted:?}"
    );
    assert_eq!(ROUTES.len(), routed.len(), "a route is listed twice");
}

#[test]
fn operation_ids_security_and_roles_match() {
    let d = doc();
    for r in ROUTES {
        let op = &d["paths"][r.path][r.verb.as_str()];
        assert_eq!(
            op["operationId"],
            r.operation_id,
            "{} {}",
            r.verb.as_str(),
            r.path
        );
        let open = op["security"].as_array().is_some_and(Vec::is_empty);
        match r.access {
            Access::Open => {
                assert!(open, "{}: open route must say security: []", r.operation_id);
                assert!(op.get("x-required-role").is_none(), "{}", r.operation_id);
            }
            Access::Role(role) => {
                assert!(!open, "{}: needs a token", r.operation_id);
                assert_eq!(op["x-required-role"], role.as_str(), "{}", r.operation_id);
            }
        }
    }
}

#[test]
fn path_and_query_parameters_match() {
    let d = doc();
    for r in ROUTES {
        let params = parameters(&d, r.path, r.verb.as_str());
        let in_path: BTreeSet<&str> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        assert_eq!(
            names_in(&params, "path"),
            in_path,
            "{} path params",
            r.operation_id
        );
        for p in params.iter().filter(|p| p["in"] == "path") {
            assert_eq!(
                p["required"], true,
                "{}: path params are required",
                r.operation_id
            );
        }
        let query: BTreeSet<&str> = r.query.iter().copied().collect();
        assert_eq!(
            names_in(&params, "query"),
            query,
            "{} query params",
            r.operation_id
        );
    }
}

/// The endpoint table of the admin issue (plus the DLQ body read), with the least role each
/// needs: a row missing from the route table or the document fails here.
#[test]
fn the_issue_endpoint_table_is_routed_and_documented() {
    use hub_core::access::Role::{Admin, Operator, Viewer};
    let d = doc();
    let table = [
        (Verb::Post, "/api/v1/integrations/providers", Admin),
        (Verb::Get, "/api/v1/integrations/providers", Viewer),
        (Verb::Get, "/api/v1/integrations/providers/{id}", Viewer),
        (Verb::Patch, "/api/v1/integrations/providers/{id}", Admin),
        (Verb::Delete, "/api/v1/integrations/providers/{id}", Admin),
        (
            Verb::Get,
            "/api/v1/integrations/providers/{id}/health",
            Viewer,
        ),
        (Verb::Post, "/api/v1/integrations/call", Operator),
        (Verb::Get, "/api/v1/integrations/dlq", Viewer),
        (Verb::Get, "/api/v1/integrations/dlq/{id}", Viewer),
        (Verb::Get, "/api/v1/integrations/dlq/{id}/body", Operator),
        (Verb::Post, "/api/v1/integrations/dlq/{id}/retry", Operator),
        (Verb::Post, "/api/v1/integrations/dlq/retry-all", Operator),
        (Verb::Delete, "/api/v1/integrations/dlq/{id}", Operator),
        (Verb::Get, "/api/v1/integrations/jobs/{id}", Viewer),
    ];
    for (verb, path, role) in table {
        let route = ROUTES
            .iter()
            .find(|r| r.path == path && r.verb == verb)
            .unwrap_or_else(|| panic!("{} {path} is not routed", verb.as_str()));
        assert_eq!(route.access, Access::Role(role), "{path}");
        assert!(
            d["paths"][path].get(verb.as_str()).is_some(),
            "{} {path} is not documented",
            verb.as_str()
        );
    }
    for open in [
        "/api/v1/integrations/ca.pem",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        let route = ROUTES.iter().find(|r| r.path == open).expect(open);
        assert_eq!(route.access, Access::Open, "{open}");
    }
}

#[test]
fn every_schema_compiles() {
    let d = doc();
    for name in d["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .keys()
    {
        let schema = serde_json::json!({"$ref": format!("#/components/schemas/{name}")});
        validator(&d, &schema);
    }
}

/// A value for a query parameter that its schema accepts.
fn sample(doc: &Value, schema: &Value) -> String {
    let schema = deref(doc, schema);
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.as_str().expect("string enum").to_owned();
    }
    if let Some(example) = schema["examples"].as_array().and_then(|e| e.first()) {
        return example.as_str().expect("string example").to_owned();
    }
    match schema["type"].as_str() {
        Some("integer") => schema["minimum"].as_i64().unwrap_or(1).to_string(),
        Some("string") if schema["pattern"].as_str() == Some("^[1-9][0-9]{0,17}$") => "1".into(),
        _ => "x".into(),
    }
}

#[tokio::test]
async fn routes_accept_exactly_their_documented_query_parameters() {
    let app = TestApp::new().await;
    let d = doc();
    for r in ROUTES.iter().filter(|r| !r.query.is_empty()) {
        let method = r.verb.as_str().to_uppercase();
        // Required parameters go along with each one tried.
        let required = |except: &str| -> String {
            parameters(&d, r.path, r.verb.as_str())
                .iter()
                .filter(|p| p["in"] == "query" && p["required"] == true && p["name"] != except)
                .map(|p| {
                    format!(
                        "&{}={}",
                        p["name"].as_str().unwrap(),
                        sample(&d, &p["schema"])
                    )
                })
                .collect()
        };
        for p in parameters(&d, r.path, r.verb.as_str()) {
            if p["in"] != "query" {
                continue;
            }
            let name = p["name"].as_str().unwrap();
            let uri = format!(
                "{}?{name}={}{}",
                r.path,
                sample(&d, &p["schema"]),
                required(name)
            );
            let resp = app.send(&method, &uri, Some(BOOTSTRAP), None).await;
            assert!(
                (200..300).contains(&resp.status),
                "{method} {uri}: {} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
        let uri = format!("{}?bogus=1{}", r.path, required(""));
        let resp = app.send(&method, &uri, Some(BOOTSTRAP), None).await;
        assert_eq!(resp.status, 400, "{uri}");
        assert_eq!(resp.json()["field"], "bogus", "{uri}");
    }
}

/// The auth types and credential fields the document names are the ones [`AuthType`] has; the
/// `path` and `body` inputs the service accepts validate against `AuthInput` (and bad ones
/// fail both).
#[test]
fn auth_types_and_their_fields_match_the_service() {
    use hub_core::provider::{Auth, AuthType};
    let d = doc();
    let schemas = &d["components"]["schemas"];
    let enum_of = |v: &Value| -> BTreeSet<String> {
        v["enum"]
            .as_array()
            .expect("an enum")
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let types = enum_of(&schemas["AuthType"]);
    let fields = enum_of(&schemas["AuthView"]["properties"]["fieldsSet"]["items"]);
    let all = AuthType::ALL;
    let rust: BTreeSet<String> = all.iter().map(|t| t.as_str().to_owned()).collect();
    assert_eq!(types, rust, "AuthType enum");
    for t in all {
        for f in t.fields() {
            assert!(fields.contains(*f), "fieldsSet lacks {f} of {}", t.as_str());
        }
    }
    let input = validator(
        &d,
        &serde_json::json!({"$ref": "#/components/schemas/AuthInput"}),
    );
    for (json, valid) in [
        (
            serde_json::json!({"type": "path", "template": "/bot{secret}", "value": "1:A"}),
            true,
        ),
        (
            serde_json::json!({"type": "body", "format": "form", "field": "token", "value": "x"}),
            true,
        ),
        (
            serde_json::json!({"type": "body", "format": "json", "field": "k", "value": "x"}),
            true,
        ),
        (
            serde_json::json!({"type": "path", "template": "/bot", "value": "1:A"}),
            false,
        ),
        (
            serde_json::json!({"type": "body", "format": "xml", "field": "t", "value": "x"}),
            false,
        ),
        (
            serde_json::json!({"type": "body", "field": "t", "value": "x"}),
            false,
        ),
        (
            serde_json::json!({"type": "oauth2_client_credentials",
                "tokenUrl": "https://idp.test/token", "clientId": "a", "clientSecret": "b",
                "scopes": ["x"], "clientAuth": "body", "whenIdpDown": "useValidToken"}),
            true,
        ),
        (
            serde_json::json!({"type": "oauth2_client_credentials",
                "tokenUrl": "https://idp.test/token", "clientId": "a"}),
            false,
        ),
        (
            serde_json::json!({"type": "oauth2_refresh_token",
                "tokenUrl": "https://idp.test/token", "clientId": "a", "refreshToken": "r"}),
            true,
        ),
        (
            serde_json::json!({"type": "aws_sigv4", "accessKeyId": "AKID",
                "secretAccessKey": "s", "region": "us-east-1", "service": "s3"}),
            true,
        ),
        (
            serde_json::json!({"type": "aws_sigv4", "accessKeyId": "AKID",
                "secretAccessKey": "s", "region": "us-east-1"}),
            false,
        ),
        (
            serde_json::json!({"type": "hmac", "secret": "s", "signatureHeader": "X-Signature",
                "timestampHeader": "X-Timestamp",
                "parts": ["method", "path", "timestamp", {"header": "x-key"}, "bodySha256"]}),
            true,
        ),
        (
            serde_json::json!({"type": "hmac", "secret": "s", "signatureHeader": "X-Signature",
                "parts": ["nonsense"]}),
            false,
        ),
    ] {
        assert_eq!(input.is_valid(&json), valid, "document: {json}");
        let service =
            serde_json::from_value::<Auth>(json.clone()).is_ok_and(|a| a.validate().is_ok());
        assert_eq!(service, valid, "service: {json}");
    }
}
