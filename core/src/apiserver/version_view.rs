//! Serving one version of a resource through another, stored one, as Kubernetes serves several
//! versions from one storage. A request to the served version is rewritten to the stored
//! version's path — bodies converted up, responses (objects, lists, watch events, Table rows)
//! converted down — so storage, validation, the watch cache and authorization see one version.
//! Patches are applied to the object as the served version shows it, then written back.

use super::body::{body_format, parse_body, BodyFormat};
use super::error::ApiError;
use super::handler::{apply_patch, handle};
use super::ApiState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, request::Parts, HeaderValue, Method, Request, Response, StatusCode};
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;

/// A resource version served through a stored one.
#[derive(Clone, Copy)]
pub(crate) struct VersionView {
    /// The served version's path prefix, e.g. `/apis/autoscaling/v1/`.
    pub served_prefix: &'static str,
    /// The stored version's path prefix, e.g. `/apis/autoscaling/v2/`.
    pub stored_prefix: &'static str,
    /// The served `apiVersion`, e.g. `autoscaling/v1`.
    pub served_api_version: &'static str,
    /// The resource (plural), the same in both versions.
    pub plural: &'static str,
    /// The kind, the same in both versions.
    pub kind: &'static str,
    /// The stored form of a served object.
    pub up: fn(Value) -> Value,
    /// The served form of a stored object.
    pub down: fn(Value) -> Value,
    /// Field selector names of the served version and the stored names they stand for.
    pub renamed_fields: &'static [(&'static str, &'static str)],
}

impl VersionView {
    /// Whether a request path is one of the served version's resource.
    pub(crate) fn serves(&self, path: &str) -> bool {
        path.strip_prefix(self.served_prefix)
            .is_some_and(|rest| rest.split('/').any(|s| s == self.plural))
    }

    /// The served form of whatever a stored-version response carries: an object, a list, a
    /// Table, a watch event.
    fn down_any(&self, mut value: Value) -> Value {
        let kind = value["kind"].as_str().unwrap_or_default();
        if kind == self.kind {
            return (self.down)(value);
        }
        if kind == format!("{}List", self.kind) {
            value["apiVersion"] = json!(self.served_api_version);
            if let Some(items) = value["items"].as_array_mut() {
                for item in items.iter_mut() {
                    *item = (self.down)(std::mem::take(item));
                }
            }
            return value;
        }
        if kind == "Table" {
            if let Some(rows) = value["rows"].as_array_mut() {
                for row in rows.iter_mut().filter(|r| r["object"]["kind"] == self.kind) {
                    row["object"] = (self.down)(std::mem::take(&mut row["object"]));
                }
            }
            return value;
        }
        if value.get("type").is_some() && value["object"].is_object() {
            value["object"] = self.down_any(std::mem::take(&mut value["object"]));
        }
        value
    }

    /// The query with the served version's field selector names renamed to the stored ones.
    fn stored_query(&self, query: &str) -> String {
        query
            .split('&')
            .map(|part| match part.strip_prefix("fieldSelector=") {
                Some(selector) => {
                    let renamed = self
                        .renamed_fields
                        .iter()
                        .fold(selector.to_string(), |s, (served, stored)| {
                            s.replace(served, stored)
                        });
                    format!("fieldSelector={renamed}")
                }
                None => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Serves a request to the served version through the stored one.
    pub(crate) async fn serve(
        &self,
        state: Arc<ApiState>,
        parts: Parts,
        body: Body,
    ) -> Response<Body> {
        let path = parts
            .uri
            .path()
            .replacen(self.served_prefix, self.stored_prefix, 1);
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{}", self.stored_query(q)))
            .unwrap_or_default();
        let target = format!("{path}{query}");
        let streaming =
            query.contains("watch=true") || query.contains("watch=1") || path.contains("/watch/");
        let body = match axum::body::to_bytes(body, state.config.max_body_bytes).await {
            Ok(b) => b,
            Err(_) => return error_response(ApiError::too_large(state.config.max_body_bytes)),
        };
        let response = match parts.method.clone() {
            Method::POST | Method::PUT => {
                let format = match body_format(&parts.headers) {
                    Ok(f @ (BodyFormat::Json | BodyFormat::Yaml | BodyFormat::Protobuf)) => f,
                    Ok(_) => {
                        return error_response(ApiError::unsupported_media_type("a patch type"))
                    }
                    Err(err) => return error_response(err),
                };
                let object = match parse_body(&body, format) {
                    Ok(Some(object)) => object,
                    Ok(None) => return error_response(ApiError::bad_request("the body is empty")),
                    Err(err) => return error_response(err),
                };
                let upgraded = serde_json::to_vec(&(self.up)(object)).unwrap_or_default();
                inner(
                    &state,
                    sub_request(&parts, parts.method.clone(), &target, upgraded),
                )
                .await
            }
            Method::PATCH => match self.patch(&state, &parts, &path, &query, &body).await {
                Ok(response) => response,
                Err(err) => return error_response(err),
            },
            method => inner(&state, sub_request(&parts, method, &target, body.to_vec())).await,
        };
        self.convert_response(response, streaming).await
    }

    /// The served form of a stored-version response: whole JSON bodies at once, watch streams
    /// line by line.
    async fn convert_response(&self, response: Response<Body>, streaming: bool) -> Response<Body> {
        let (mut parts, body) = response.into_parts();
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        if !is_json {
            return Response::from_parts(parts, body);
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        let view = *self;
        if streaming {
            let mut pending: Vec<u8> = Vec::new();
            let stream = body.into_data_stream().map(move |chunk| {
                let chunk = chunk?;
                pending.extend_from_slice(&chunk);
                let mut out = Vec::new();
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    match serde_json::from_slice::<Value>(&line) {
                        Ok(event) => {
                            out.extend(
                                serde_json::to_vec(&view.down_any(event)).unwrap_or_default(),
                            );
                            out.push(b'\n');
                        }
                        Err(_) => out.extend(line),
                    }
                }
                Ok::<_, axum::Error>(bytes::Bytes::from(out))
            });
            return Response::from_parts(parts, Body::from_stream(stream));
        }
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let converted = match serde_json::from_slice::<Value>(&bytes) {
            Ok(value) => serde_json::to_vec(&self.down_any(value)).unwrap_or_default(),
            Err(_) => bytes.to_vec(),
        };
        Response::from_parts(parts, Body::from(converted))
    }

    /// A patch to the served form: applied to the stored object seen in the served version,
    /// written back in the stored one (retried on conflicting writes).
    async fn patch(
        &self,
        state: &Arc<ApiState>,
        parts: &Parts,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        let format = body_format(&parts.headers)?;
        let patch = match format {
            BodyFormat::MergePatch | BodyFormat::JsonPatch | BodyFormat::StrategicMergePatch => {
                parse_body(body, format)?
                    .ok_or_else(|| ApiError::bad_request("the patch is empty"))?
            }
            _ => {
                return Err(ApiError::unsupported_media_type(&format!(
                    "server-side apply of {} {} (apply the stored version)",
                    self.served_api_version, self.plural
                )))
            }
        };
        let (group, version) = self
            .served_api_version
            .split_once('/')
            .unwrap_or(("", self.served_api_version));
        let kind = state
            .registry()
            .get(group, version, self.plural)
            .cloned()
            .ok_or_else(ApiError::no_route)?;
        for _ in 0..5 {
            let current = inner(state, sub_request(parts, Method::GET, path, Vec::new())).await;
            if current.status() != StatusCode::OK {
                return Ok(self.convert_response(current, false).await);
            }
            let bytes = axum::body::to_bytes(current.into_body(), usize::MAX)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let stored: Value =
                serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(e.to_string()))?;
            let version = stored["metadata"]["resourceVersion"].clone();
            let mut served = (self.down)(stored);
            apply_patch(&kind, format, &mut served, &patch)?;
            let explicit = patch
                .pointer("/metadata/resourceVersion")
                .is_some_and(|v| !v.is_null());
            if !explicit {
                served["metadata"]["resourceVersion"] = version;
            }
            let upgraded = serde_json::to_vec(&(self.up)(served)).unwrap_or_default();
            let written = inner(
                state,
                sub_request(parts, Method::PUT, &format!("{path}{query}"), upgraded),
            )
            .await;
            if written.status() == StatusCode::CONFLICT && !explicit {
                continue;
            }
            return Ok(written);
        }
        Err(ApiError::too_many_requests(1))
    }
}

async fn inner(state: &Arc<ApiState>, request: Request<Body>) -> Response<Body> {
    Box::pin(handle(State(state.clone()), request)).await
}

fn sub_request(
    parts: &Parts,
    method: Method,
    path_and_query: &str,
    body: Vec<u8>,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path_and_query);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH && name != header::CONTENT_TYPE {
            builder = builder.header(name, value);
        }
    }
    // The caller's identity travels with the request.
    if let Some(certificate) = parts.extensions.get::<super::ClientCertificate>() {
        builder = builder.extension(certificate.clone());
    }
    if let Some(user) = parts.extensions.get::<super::InProcessUser>() {
        builder = builder.extension(user.clone());
    }
    builder
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

fn error_response(err: ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Body::from(err.status().to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(mut object: Value) -> Value {
        object["apiVersion"] = json!("example.com/v1");
        object["seen"] = json!(true);
        object
    }

    static VIEW: VersionView = VersionView {
        served_prefix: "/apis/example.com/v1/",
        stored_prefix: "/apis/example.com/v2/",
        served_api_version: "example.com/v1",
        plural: "widgets",
        kind: "Widget",
        up: |object| object,
        down: tagged,
        renamed_fields: &[("old.", "new.")],
    };

    #[test]
    fn objects_lists_tables_and_watch_events_are_converted_down() {
        let widget = json!({"kind": "Widget", "metadata": {"name": "w"}});
        assert_eq!(VIEW.down_any(widget.clone())["seen"], true);
        let list = VIEW.down_any(json!({"kind": "WidgetList", "apiVersion": "example.com/v2", "items": [widget.clone()]}));
        assert_eq!(list["apiVersion"], "example.com/v1");
        assert_eq!(list["items"][0]["seen"], true);
        let table = VIEW
            .down_any(json!({"kind": "Table", "rows": [{"cells": [], "object": widget.clone()}]}));
        assert_eq!(table["rows"][0]["object"]["seen"], true);
        let event = VIEW.down_any(json!({"type": "ADDED", "object": widget}));
        assert_eq!(event["object"]["seen"], true);
        // A Status is not the kind's: it passes as it is.
        let status = json!({"kind": "Status", "code": 404});
        assert_eq!(VIEW.down_any(status.clone()), status);
    }

    #[test]
    fn only_field_selectors_are_renamed() {
        assert_eq!(
            VIEW.stored_query(
                "fieldSelector=old.name%3Dx,old.kind%3DPod&labelSelector=old.a%3Db&watch=1"
            ),
            "fieldSelector=new.name%3Dx,new.kind%3DPod&labelSelector=old.a%3Db&watch=1"
        );
    }
}
