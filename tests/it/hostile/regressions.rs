//! Regressions for what the suites above found.

use super::*;

/// serde's "unknown variant `…`" named the value sent; the problem detail now names only what
/// was expected.
#[tokio::test]
async fn an_unknown_variant_is_not_reflected() {
    let app = spawn_app().await;
    app.put_fields("v-1", json!({"identity.full_name": "Variant"})).await;
    let body = json!({"recipient": "Bank", "basis": "QMRKVARIANT1", "fields": ["identity.full_name"]});
    let r = app.call(reqwest::Method::POST, "/v1/subjects/v-1/disclosures", Some("svc-all"), Some(body)).await;
    assert_eq!(r.status, 400);
    assert!(!r.problem_detail().contains("QMRKVARIANT1"), "{}", r.problem_detail());
    assert!(r.problem_detail().contains("expected one of `consent`"), "{}", r.problem_detail());
}

/// The OpenAPI document matches what the server does: errors are problem documents, and the
/// middleware's refusals are documented (schemathesis found both missing).
#[tokio::test]
async fn the_openapi_document_describes_errors_as_problem_documents() {
    let app = spawn_app().await;
    let doc = app.call(reqwest::Method::GET, "/openapi.json", None, None).await.body;
    let put = &doc["paths"]["/v1/subjects/{id}"]["put"];
    for code in ["400", "401", "413", "415", "431"] {
        let content = put["responses"][code]["content"].as_object().unwrap_or_else(|| panic!("PUT lacks {code}"));
        assert!(content.contains_key("application/problem+json") && !content.contains_key("application/json"), "{code}: {content:?}");
    }
    assert!(doc["paths"]["/v1/keys"]["get"]["responses"]["431"].is_object());
    let id = &doc["paths"]["/v1/subjects/{id}"]["get"]["parameters"][0];
    assert_eq!((id["name"].as_str(), id["schema"]["maxLength"].as_u64()), (Some("id"), Some(128)));
}
