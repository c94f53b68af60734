//! The OpenAPI 3.1 contract, `admin/api/openapi.yaml`, compiled in and served as is at
//! `/api/v1/openapi.yaml`. The tests beside it fail when the document and the service drift:
//! routes, methods, operation ids, parameters, security, and the schemas of real responses.

/// The document.
pub const OPENAPI_YAML: &str = include_str!("../api/openapi.yaml");

#[cfg(test)]
mod tests;
