//! Request dispatch: authentication, authorization, routing to discovery or to a verb on a
//! resource, and the write pipeline (decode, default, admit, validate, store) that every
//! create, update, patch and subresource write goes through.

use super::admission::{AdmissionRequest, CachedReads, Operation};
use super::body::{
    body_format, error_response, json_bytes_response, json_response, parse_body, BodyFormat,
};
use super::managed_fields::{self, Writer};
use super::pod_binding::{self, Refusal};
use super::request::{parse_path, Query, ResourcePath, Target};
use super::strategy::{
    apply_defaults, check_types, duplicate_fields, prune_custom, split_status, unknown_fields,
    validate_object, validate_update, FieldValidation,
};
use super::{
    discovery, list, node_proxy, watch, ApiError, ApiState, Cause, InProcessUser,
    RequestAttributes, UserInfo,
};
use crate::registry::{json_path_pointer, Registry, ResourceKind};
use crate::storage::{ObjectBytes, StorageError};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use tracing::Instrument;

/// Everything a verb needs about one request.
pub(crate) struct Ctx {
    pub state: Arc<ApiState>,
    pub registry: Arc<Registry>,
    pub user: UserInfo,
    pub query: Query,
    pub headers: HeaderMap,
    pub kind: Arc<ResourceKind>,
    pub path: ResourcePath,
    pub dry_run: bool,
    pub warnings: Vec<String>,
    pub field_validation: FieldValidation,
    pub body_problems: Vec<String>,
    /// Set while a server-side apply writes: the apply has set `managedFields` itself.
    pub applying: bool,
    /// A websocket upgrade offered by the client (exec, attach).
    pub websocket: Option<axum::extract::ws::WebSocketUpgrade>,
    /// The connection upgrade of a SPDY request (port-forward).
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// The router's single entry point.
pub(crate) async fn handle(
    State(state): State<Arc<ApiState>>,
    request: Request<Body>,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let websocket = if parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    {
        use axum::extract::FromRequestParts;
        axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .ok()
    } else {
        None
    };
    let upgrade = if parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("spdy/"))
    {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let path = parts.uri.path().to_string();
    for view in [&super::hpa_v1::VIEW, &super::events_v1::VIEW] {
        if view.serves(&path) {
            return view.serve(state, parts, body).await;
        }
    }
    let span = tracing::debug_span!("request", method = %parts.method, path = %path);
    let method = parts.method.clone();
    let received = chrono::Utc::now();
    let mut audited_user: Option<UserInfo> = None;
    let result = async {
        if let Some(response) = public_path(&state, &parts.method, &path).await {
            return Ok(response);
        }
        let user = match parts.extensions.get::<InProcessUser>() {
            Some(InProcessUser(user)) => user.clone(),
            None => state
                .authenticator
                .authenticate(&parts)
                .await?
                .ok_or_else(ApiError::unauthorized)?,
        };
        if state.audit.is_some() {
            audited_user = Some(user.clone());
        }
        let target = parse_path(&path);
        if !matches!(target, Ok(Target::Resource(_))) {
            // Discovery, /metrics, /openapi: authorized by URL path.
            let verb = parts.method.as_str().to_ascii_lowercase();
            state
                .authorizer
                .authorize(&user, &RequestAttributes::non_resource(&verb, &path))
                .await?;
            if let Some(response) = special_path(&state, &parts.method, &path).await {
                return Ok(response);
            }
        }
        let query = Query::parse(parts.uri.query())?;
        // Watches, followed logs and streams are long-lived and do not count against the
        // in-flight limit.
        let long_lived = query.bool("watch").unwrap_or(false)
            || query.bool("follow").unwrap_or(false)
            || websocket.is_some()
            || upgrade.is_some();
        let _permit = if long_lived {
            None
        } else {
            Some(
                state
                    .in_flight
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| ApiError::too_many_requests(1))?,
            )
        };
        let body = axum::body::to_bytes(body, state.config.max_body_bytes)
            .await
            .map_err(|_| ApiError::too_large(state.config.max_body_bytes))?;
        let accept = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let registry = state.registry();
        match target? {
            Target::CoreVersions if discovery::wants_aggregated(&accept) => {
                Ok(aggregated(discovery::aggregated(&registry, true)))
            }
            Target::Groups if discovery::wants_aggregated(&accept) => {
                Ok(aggregated(discovery::aggregated(&registry, false)))
            }
            Target::CoreVersions => Ok(ok(discovery::core_versions(
                &state.config.advertise_address,
            ))),
            Target::Groups => Ok(ok(discovery::group_list(&registry))),
            Target::Group(group) => discovery::group(&registry, &group)
                .map(ok)
                .ok_or_else(ApiError::no_route),
            Target::GroupVersion { group, version } => {
                discovery::resource_list(&registry, &group, &version)
                    .map(ok)
                    .ok_or_else(ApiError::no_route)
            }
            Target::Resource(resource) => {
                let kind = registry
                    .get(&resource.group, &resource.version, &resource.plural)
                    .cloned()
                    .ok_or_else(ApiError::no_route)?;
                if resource.namespace.is_some() && !kind.namespaced {
                    return Err(ApiError::no_route());
                }
                let dry_run = match query.get("dryRun") {
                    None | Some("") => false,
                    Some("All") => true,
                    Some(other) => {
                        return Err(ApiError::bad_request(format!(
                            "unsupported dryRun value {other:?}: supported values: \"All\""
                        )))
                    }
                };
                let query_field_validation = query.get("fieldValidation").map(str::to_string);
                let ctx = Ctx {
                    state: state.clone(),
                    registry,
                    user,
                    query,
                    headers: parts.headers.clone(),
                    kind,
                    path: resource,
                    dry_run,
                    warnings: Vec::new(),
                    field_validation: FieldValidation::parse(query_field_validation.as_deref())?,
                    body_problems: duplicate_fields(&body),
                    applying: false,
                    websocket,
                    upgrade,
                };
                if long_lived {
                    return resource_request(ctx, &parts.method, body).await;
                }
                let limit = ctx
                    .query
                    .get("timeout")
                    .and_then(request_timeout)
                    .map_or(state.config.request_timeout, |t| {
                        t.min(state.config.request_timeout)
                    });
                tokio::time::timeout(limit, resource_request(ctx, &parts.method, body))
                    .await
                    .unwrap_or_else(|_| Err(ApiError::timeout(limit)))
            }
        }
    }
    .instrument(span)
    .await;
    let response = result.unwrap_or_else(|err| {
        tracing::debug!(
            code = err.code,
            reason = err.reason,
            "request failed: {}",
            err.message
        );
        error_response(&err)
    });
    state
        .metrics
        .record(method.as_str(), response.status().as_u16());
    if let Some(audit) = &state.audit {
        audit.record(audit_record(
            &parts,
            audited_user,
            response.status().as_u16(),
            received,
        ));
    }
    response
}

/// A request's `?timeout=` (`30s`, `1m`, `500ms`, `1m30s`, as Go's durations are written).
fn request_timeout(text: &str) -> Option<std::time::Duration> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ms" => std::time::Duration::from_millis(number),
            "s" => std::time::Duration::from_secs(number),
            "m" => std::time::Duration::from_secs(number.checked_mul(60)?),
            "h" => std::time::Duration::from_secs(number.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(unit)?;
        rest = &rest[unit_end..];
    }
    (!total.is_zero()).then_some(total)
}

/// What the audit log keeps of a request: no bodies, only who, what and the outcome.
fn audit_record(
    parts: &axum::http::request::Parts,
    user: Option<UserInfo>,
    code: u16,
    received: chrono::DateTime<chrono::Utc>,
) -> super::AuditRecord {
    let header = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let method_verb = parts.method.as_str().to_ascii_lowercase();
    let (verb, object_ref) = match parse_path(parts.uri.path()) {
        Ok(Target::Resource(resource)) => {
            let verb = Query::parse(parts.uri.query())
                .ok()
                .and_then(|query| verb(&parts.method, &resource, &query).ok())
                .map_or(method_verb, str::to_string);
            let mut object = json!({
                "resource": resource.plural,
                "apiGroup": resource.group,
                "apiVersion": resource.version,
            });
            if let Some(ns) = &resource.namespace {
                object["namespace"] = json!(ns);
            }
            if let Some(name) = &resource.name {
                object["name"] = json!(name);
            }
            if let Some(sub) = &resource.subresource {
                object["subresource"] = json!(sub);
            }
            (verb, Some(object))
        }
        _ => (method_verb, None),
    };
    super::AuditRecord {
        user,
        verb,
        request_uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string()),
        source_ip: parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        user_agent: header(header::USER_AGENT),
        object_ref,
        code,
        received,
    }
}

fn ok(value: Value) -> Response<Body> {
    json_response(StatusCode::OK, &value, &[])
}

fn aggregated(value: Value) -> Response<Body> {
    let mut response = ok(value);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The paths served to anyone, authenticated or not: version and health.
async fn public_path(state: &ApiState, method: &Method, path: &str) -> Option<Response<Body>> {
    if method != Method::GET {
        return None;
    }
    match path.trim_end_matches('/') {
        "/version" => Some(ok(json!({
            "major": "1", "minor": "33", "gitVersion": format!("v1.33.0-capstan.{}", env!("CARGO_PKG_VERSION")),
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "rust", "compiler": "rustc", "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
        }))),
        "/healthz" | "/livez" => Some(text(StatusCode::OK, "ok")),
        "/readyz" => Some(match state.storage.store().current_revision().await {
            Ok(_) => text(StatusCode::OK, "ok"),
            Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
        }),
        _ => None,
    }
}

/// Paths outside the resource tree that need an authenticated, authorized user.
async fn special_path(state: &ApiState, method: &Method, path: &str) -> Option<Response<Body>> {
    if method != Method::GET {
        return None;
    }
    match path.trim_end_matches('/') {
        "/metrics" => {
            let revision = state.storage.store().current_revision().await.ok();
            let in_flight = state.config.max_in_flight.max(1) - state.in_flight.available_permits();
            let mut response = Response::new(Body::from(state.metrics.render(in_flight, revision)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Some(response)
        }
        "/openapi/v3" => Some(ok(super::openapi::index(&state.registry()))),
        other if other.starts_with("/openapi/v3/") => {
            let registry = state.registry();
            Some(
                match super::openapi::document_for_path(&registry, &other["/openapi/v3/".len()..]) {
                    Some(document) => ok(document),
                    None => error_response(&ApiError::no_route()),
                },
            )
        }
        // An empty protobuf document: kubectl's client-side validation then skips unknown kinds.
        "/openapi/v2" | "/swagger-2.0.0.pb-v1" => {
            let mut response = Response::new(Body::empty());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            Some(response)
        }
        _ => None,
    }
}

fn verb(method: &Method, path: &ResourcePath, query: &Query) -> Result<&'static str, ApiError> {
    Ok(match (method.as_str(), path.name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if query.bool("watch")? => "watch",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("POST", true) if path.subresource.is_some() => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method} {})",
                path.plural
            )))
        }
    })
}

async fn resource_request(
    mut ctx: Ctx,
    method: &Method,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let verb = verb(method, &ctx.path, &ctx.query)?;
    let attributes = RequestAttributes {
        verb: verb.to_string(),
        group: ctx.kind.group.clone(),
        resource: ctx.kind.plural.clone(),
        subresource: ctx.path.subresource.clone(),
        namespace: ctx.path.namespace.clone(),
        name: ctx.path.name.clone(),
        path: None,
        field_selector: ctx.query.get("fieldSelector").map(str::to_string),
    };
    ctx.state
        .authorizer
        .authorize(&ctx.user, &attributes)
        .await?;
    if let Some(sub) = ctx.path.subresource.as_deref() {
        if ctx.kind.subresource(sub).is_none() {
            return Err(ApiError::no_route());
        }
    }
    if ctx.kind.group.is_empty() && ctx.kind.plural == "componentstatuses" {
        return component_statuses(&ctx, verb).await;
    }
    if super::discovery::is_review(&ctx.kind) {
        if verb != "create" || ctx.path.subresource.is_some() {
            return Err(ApiError::method_not_allowed(format!(
                "{verb} is not supported on {}: it only answers creates",
                ctx.kind.plural
            )));
        }
        let input = decode(&ctx, &body)?;
        let answer = if ctx.kind.kind == "SelfSubjectRulesReview" {
            super::access_review::rules_review(&ctx, input)
        } else if ctx.kind.kind == "SelfSubjectReview" {
            super::self_subject_review::review(&ctx, &input)
        } else {
            super::access_review::review(&ctx, input).await?
        };
        return Ok(json_response(StatusCode::CREATED, &answer, &ctx.warnings));
    }
    if ctx.kind.group == "metrics.k8s.io" {
        let mut value = node_proxy::metrics(&ctx, verb).await?;
        if let Some(include) = table_wanted(&ctx) {
            let items = match value.get("items").and_then(Value::as_array) {
                Some(items) => items.clone(),
                None => vec![value.clone()],
            };
            value = super::table::table(&ctx.kind, &items, "", None, true, include);
        }
        return Ok(json_response(StatusCode::OK, &value, &[]));
    }
    let name = ctx.path.name.clone().unwrap_or_default();
    let sub = ctx.path.subresource.clone();
    let (status, value) = match (verb, sub.as_deref()) {
        ("list", _) => (StatusCode::OK, list::list(&ctx).await?),
        ("get", Some("log")) => return node_proxy::pod_log(&ctx, &name).await,
        ("get" | "create", Some("exec")) => {
            return node_proxy::pod_stream(&mut ctx, &name, false).await
        }
        ("get" | "create", Some("attach")) => {
            return node_proxy::pod_stream(&mut ctx, &name, true).await
        }
        ("get" | "create", Some("portforward")) => {
            return super::port_forward::serve(&mut ctx, &name).await
        }
        ("watch", _) => return watch::watch(ctx).await,
        ("get", None | Some("status")) => (
            StatusCode::OK,
            table_or_object(&ctx, get(&ctx, &name).await?),
        ),
        ("get", Some("scale")) => (
            StatusCode::OK,
            scale_of(&ctx.kind, &get(&ctx, &name).await?),
        ),
        ("create", None) => {
            let input = decode(&ctx, &body)?;
            let created = create(&mut ctx, input).await?;
            // The client gets the JSON just stored, not a second encoding of it.
            match created.json {
                Some(json) if !super::crd::is_definition(&ctx.kind) => {
                    let mut out = Vec::new();
                    json.write_to(&mut out);
                    return Ok(json_bytes_response(StatusCode::CREATED, out, &ctx.warnings));
                }
                _ => (StatusCode::CREATED, created.object),
            }
        }
        ("create", Some("eviction")) if is_kind(&ctx.kind, "", "Pod") => (
            StatusCode::CREATED,
            super::eviction::evict(&mut ctx, &name, &body).await?,
        ),
        ("create", Some("token")) if is_kind(&ctx.kind, "", "ServiceAccount") => {
            (StatusCode::CREATED, {
                let input = decode(&ctx, &body)?;
                super::token_request::issue(&ctx, &name, input).await?
            })
        }
        ("create", Some("binding")) => (StatusCode::CREATED, {
            let input = decode(&ctx, &body)?;
            bind(&mut ctx, &name, input).await?
        }),
        ("update", None | Some("status")) => (StatusCode::OK, {
            let input = decode(&ctx, &body)?;
            replace(&mut ctx, &name, input).await?
        }),
        ("update", Some("scale")) => (StatusCode::OK, {
            let input = decode(&ctx, &body)?;
            write_scale(&mut ctx, &name, input, None).await?
        }),
        ("patch", Some("scale")) => {
            let format = body_format(&ctx.headers)?;
            (
                StatusCode::OK,
                write_scale(&mut ctx, &name, parse_patch(format, &body)?, Some(format)).await?,
            )
        }
        ("patch", None | Some("status")) => patch(&mut ctx, &name, &body).await?,
        ("delete", None) => delete(&mut ctx, &name, &body).await?,
        ("deletecollection", None) => (StatusCode::OK, delete_collection(&mut ctx, &body).await?),
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "{verb} is not supported on {}/{}",
                ctx.kind.plural,
                sub.unwrap_or_default()
            )))
        }
    };
    if super::crd::is_definition(&ctx.kind)
        && !ctx.dry_run
        && matches!(
            verb,
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    {
        // The definition's kinds are served (or gone) before the client hears back.
        super::crd::sync(&ctx.state).await;
    }
    Ok(json_response(status, &value, &ctx.warnings))
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn table_or_object(ctx: &Ctx, object: Value) -> Value {
    if let Some(include) = table_wanted(ctx) {
        let rv = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        super::table::table(&ctx.kind, &[object], &rv, None, true, include)
    } else {
        object
    }
}

/// Whether the client asked for a Table, and what its rows carry (`includeObject`).
pub(crate) fn table_wanted(ctx: &Ctx) -> Option<super::table::RowObject> {
    wants_table(&ctx.headers)
        .then(|| super::table::RowObject::named(ctx.query.get("includeObject")))
}

fn decode(ctx: &Ctx, body: &[u8]) -> Result<Value, ApiError> {
    let format = body_format(&ctx.headers)?;
    if !matches!(
        format,
        BodyFormat::Json | BodyFormat::Yaml | BodyFormat::Protobuf
    ) {
        return Err(ApiError::unsupported_media_type(
            ctx.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        ));
    }
    let value = parse_body(body, format)?
        .ok_or_else(|| ApiError::bad_request("the request body is empty"))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// Type-checks a built-in object, applies `fieldValidation` to its unknown fields and the body's
/// duplicate keys, and drops the unknown fields (as Kubernetes' decoder does).
fn validate_fields(ctx: &mut Ctx, object: &mut Value) -> Result<(), ApiError> {
    let mut problems = std::mem::take(&mut ctx.body_problems);
    let checked = match check_types(&ctx.kind, object) {
        Ok(checked) => checked,
        // A missing required field fails decoding too; report it as Kubernetes does (422 with
        // the field), and keep the decoder's 400 for real type errors.
        Err(type_error) => {
            let causes = if type_error.message.contains("missing field") {
                validate_object(&ctx.kind, object)
            } else {
                Vec::new()
            };
            if causes.is_empty() {
                return Err(type_error);
            }
            let name = object_name(object);
            return Err(ApiError::invalid(&ctx.kind.kind, &name, causes).about(
                &ctx.kind.group,
                &ctx.kind.kind,
                &name,
            ));
        }
    };
    if let Some(known) = checked {
        problems.extend(unknown_fields(object, &known));
        *object = known;
    }
    problems.extend(prune_custom(&ctx.kind, object));
    ctx.field_validation.enforce(problems, &mut ctx.warnings)
}

/// Who writes, for `managedFields`: the `fieldManager` parameter, else the client's user agent
/// up to its first `/`, as Kubernetes names managers.
fn writer(ctx: &Ctx) -> Writer {
    let manager = ctx
        .query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .or_else(|| {
            ctx.headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .filter(|m| !m.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string());
    let api_version = if ctx.path.group.is_empty() {
        ctx.path.version.clone()
    } else {
        format!("{}/{}", ctx.path.group, ctx.path.version)
    };
    Writer {
        manager,
        api_version,
        subresource: ctx.path.subresource.clone(),
    }
}

fn namespace_of(ctx: &Ctx) -> Option<&str> {
    ctx.path
        .namespace
        .as_deref()
        .filter(|_| ctx.kind.namespaced)
}

/// Reads one object of the request's kind (the subresource aside).
pub(crate) async fn get_object(ctx: &Ctx, name: &str) -> Result<Value, ApiError> {
    get(ctx, name).await
}

pub(super) async fn get(ctx: &Ctx, name: &str) -> Result<Value, ApiError> {
    if ctx.kind.namespaced && ctx.path.namespace.is_none() {
        return Err(ApiError::no_route());
    }
    Ok(ctx
        .state
        .storage
        .get(&ctx.kind, namespace_of(ctx), name)
        .await?)
}

fn check_type(ctx: &Ctx, object: &Value) -> Result<(), ApiError> {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    if (!api_version.is_empty() && api_version != ctx.kind.api_version())
        || (!kind.is_empty() && kind != ctx.kind.kind)
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({}) or kind ({kind}) does not match {}",
            ctx.kind.api_version(),
            ctx.kind.kind
        )));
    }
    Ok(())
}

fn set_namespace(ctx: &Ctx, object: &mut Value) -> Result<(), ApiError> {
    let path_ns = ctx.path.namespace.clone();
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Err(ApiError::invalid(
            &ctx.kind.kind,
            "",
            vec![Cause::required("metadata")],
        ));
    };
    if !ctx.kind.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let body_ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    match (path_ns, body_ns) {
        (Some(path), Some(body)) if path != body => Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({body}) does not match the namespace sent on the request ({path})"
        ))),
        (Some(path), _) => {
            meta.insert("namespace".into(), Value::String(path));
            Ok(())
        }
        (None, _) => Err(ApiError::method_not_allowed(format!("{} must be created in a namespace", ctx.kind.plural))),
    }
}

fn admission_request<'a>(
    ctx: &'a Ctx,
    operation: Operation,
    name: &'a str,
    old: Option<&'a Value>,
) -> AdmissionRequest<'a> {
    AdmissionRequest {
        operation,
        kind: &ctx.kind,
        subresource: ctx.path.subresource.as_deref(),
        namespace: namespace_of(ctx),
        name,
        old,
        user: &ctx.user,
        dry_run: ctx.dry_run,
        storage: &ctx.state.storage,
        reads: CachedReads::new(&ctx.state.storage, &ctx.state.cache),
        registry: &ctx.registry,
    }
}

fn object_name(object: &Value) -> String {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn is_kind(kind: &ResourceKind, group: &str, name: &str) -> bool {
    kind.group == group && kind.kind == name
}

/// An object a create stored, with its JSON as stored when the store was written.
struct Created {
    object: Value,
    json: Option<ObjectBytes>,
}

async fn create(ctx: &mut Ctx, mut object: Value) -> Result<Created, ApiError> {
    check_type(ctx, &object)?;
    set_namespace(ctx, &mut object)?;
    let meta = object["metadata"]
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    for owned in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "selfLink",
    ] {
        meta.remove(owned);
    }
    // A Job's generated selector names its uid, so the uid is drawn before defaulting.
    if is_kind(&ctx.kind, "batch", "Job") {
        meta.insert(
            "uid".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
    }
    // generateName: validate as if the name were the prefix plus a suffix.
    let generated = meta
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
        && meta
            .get("generateName")
            .and_then(Value::as_str)
            .is_some_and(|g| !g.is_empty());
    if generated {
        let prefix = meta["generateName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        meta.insert("name".into(), Value::String(format!("{prefix}xxxxx")));
    }
    validate_fields(ctx, &mut object)?;
    apply_defaults(&ctx.kind, &mut object);
    let name = object_name(&object);
    for plugin in &ctx.state.admission.clone() {
        plugin
            .mutate(
                &admission_request(ctx, Operation::Create, &name, None),
                &mut object,
            )
            .await?;
    }
    let causes = validate_object(&ctx.kind, &object);
    if !causes.is_empty() {
        let shown = if generated { "" } else { name.as_str() };
        return Err(ApiError::invalid(&ctx.kind.kind, shown, causes).about(
            &ctx.kind.group,
            &ctx.kind.kind,
            shown,
        ));
    }
    for plugin in &ctx.state.admission.clone() {
        plugin
            .validate(
                &admission_request(ctx, Operation::Create, &name, None),
                &object,
            )
            .await?;
    }
    if generated {
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("name");
        }
    }
    if !ctx.applying {
        managed_fields::track_create(&ctx.kind, &mut object, &writer(ctx));
    }
    if super::crd::is_definition(&ctx.kind) {
        super::crd::prepare_create(&mut object);
    }
    let is_service = is_kind(&ctx.kind, "", "Service");
    if ctx.dry_run {
        return Ok(Created { object, json: None });
    }
    let (object, json) = if is_service {
        ctx.state.services.allocate_for(&mut object).await?;
        match ctx
            .state
            .storage
            .create_encoded(&ctx.kind, object.clone())
            .await
        {
            Ok(created) => created,
            Err(err) => {
                let _ = ctx.state.services.release_for(&object).await;
                return Err(err.into());
            }
        }
    } else {
        // Only a Service's copy is kept (to release its addresses if the write fails).
        ctx.state.storage.create_encoded(&ctx.kind, object).await?
    };
    after_create(ctx, &object).await;
    Ok(Created { object, json })
}

/// What a cluster does right after some creates: every namespace gets a `default` service
/// account (and, when the server publishes one, the `kube-root-ca.crt` ConfigMap).
async fn after_create(ctx: &Ctx, created: &Value) {
    if is_kind(&ctx.kind, "", "Namespace") {
        if let (Some(ca), Some(maps)) =
            (&ctx.state.root_ca, ctx.registry.get("", "v1", "configmaps"))
        {
            let mut map = json!({"metadata": {"name": super::ROOT_CA_CONFIG_MAP, "namespace": object_name(created)}, "data": {"ca.crt": ca}});
            apply_defaults(maps, &mut map);
            if let Err(err) = ctx.state.storage.create(maps, map).await {
                if !matches!(err, StorageError::AlreadyExists { .. }) {
                    tracing::warn!(error = %err, "could not publish the root CA");
                }
            }
        }
        if let Some(accounts) = ctx.registry.get("", "v1", "serviceaccounts") {
            let sa = json!({"metadata": {"name": "default", "namespace": object_name(created)}});
            if let Err(err) = ctx.state.storage.create(accounts, sa).await {
                if !matches!(err, StorageError::AlreadyExists { .. }) {
                    tracing::warn!(error = %err, "could not create the default service account");
                }
            }
        }
    }
}

async fn replace(ctx: &mut Ctx, name: &str, object: Value) -> Result<Value, ApiError> {
    check_type(ctx, &object)?;
    let body_name = object_name(&object);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let old = get(ctx, name).await?;
    write_update(ctx, name, object, old).await
}

/// The shared update pipeline: name and namespace checks, status/spec split, defaulting,
/// admission, validation, optimistic concurrency, and completion of finalized deletions.
pub(crate) async fn write_update(
    ctx: &mut Ctx,
    name: &str,
    mut object: Value,
    old: Value,
) -> Result<Value, ApiError> {
    let body_name = object_name(&object);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if object.get("metadata").is_none_or(Value::is_null) {
        object["metadata"] = json!({});
    }
    object["metadata"]["name"] = Value::String(name.to_string());
    set_namespace(ctx, &mut object)?;
    let status_write = ctx.path.subresource.as_deref() == Some("status");
    split_status(&ctx.kind, &old, &mut object, status_write);
    // Fields only the server sets.
    for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
        match old.pointer(&format!("/metadata/{field}")) {
            Some(v) => object["metadata"][field] = v.clone(),
            None => {
                if let Some(meta) = object["metadata"].as_object_mut() {
                    meta.remove(field);
                }
            }
        }
    }
    if object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        object["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    }
    validate_fields(ctx, &mut object)?;
    if !status_write {
        apply_defaults(&ctx.kind, &mut object);
    }
    for plugin in &ctx.state.admission.clone() {
        plugin
            .mutate(
                &admission_request(ctx, Operation::Update, name, Some(&old)),
                &mut object,
            )
            .await?;
    }
    let mut causes = validate_object(&ctx.kind, &object);
    causes.extend(validate_update(&ctx.kind, &old, &object));
    if !causes.is_empty() {
        return Err(ApiError::invalid(&ctx.kind.kind, name, causes).about(
            &ctx.kind.group,
            &ctx.kind.kind,
            name,
        ));
    }
    for plugin in &ctx.state.admission.clone() {
        plugin
            .validate(
                &admission_request(ctx, Operation::Update, name, Some(&old)),
                &object,
            )
            .await?;
    }
    if ctx.applying {
        managed_fields::prune_only(&mut object);
    } else {
        managed_fields::track_update(&ctx.kind, &old, &mut object, &writer(ctx));
    }
    if ctx.dry_run {
        return Ok(object);
    }
    if unchanged(&old, &object) {
        // An update that changes nothing writes nothing (the resourceVersion stays).
        return Ok(old);
    }
    let updated = ctx
        .state
        .storage
        .update_from(&ctx.kind, &old, object)
        .await?;
    let finalized = updated
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
        && updated
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        && !is_graceful_pod(&ctx.kind, &updated);
    if finalized {
        return remove_now(ctx, name, &updated).await;
    }
    Ok(updated)
}

/// Whether `new` says exactly what `old` says, at the same resourceVersion (a stale
/// resourceVersion goes on to storage, which refuses it).
fn unchanged(old: &Value, new: &Value) -> bool {
    old == new
}

fn is_graceful_pod(kind: &ResourceKind, pod: &Value) -> bool {
    is_kind(kind, "", "Pod")
        && pod
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|g| g > 0)
}

fn parse_patch(format: BodyFormat, body: &[u8]) -> Result<Value, ApiError> {
    match format {
        BodyFormat::MergePatch | BodyFormat::JsonPatch | BodyFormat::StrategicMergePatch => {
            parse_body(body, format)?.ok_or_else(|| ApiError::bad_request("the patch is empty"))
        }
        BodyFormat::ApplyPatch => {
            let applied = parse_body(body, format)?
                .ok_or_else(|| ApiError::bad_request("the apply configuration is empty"))?;
            if !applied.is_object() {
                return Err(ApiError::bad_request(
                    "an apply configuration must be an object",
                ));
            }
            Ok(applied)
        }
        BodyFormat::Json | BodyFormat::Yaml | BodyFormat::Protobuf => Err(
            ApiError::unsupported_media_type("a patch needs a patch Content-Type"),
        ),
    }
}

pub(super) fn apply_patch(
    kind: &ResourceKind,
    format: BodyFormat,
    target: &mut Value,
    patch: &Value,
) -> Result<(), ApiError> {
    match format {
        BodyFormat::MergePatch => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(target, patch);
            Ok(())
        }
        BodyFormat::StrategicMergePatch => {
            if !crate::patch::supports_strategic_merge(kind) {
                return Err(ApiError::unsupported_media_type(&format!(
                    "strategic merge patch is not supported for {}: use application/merge-patch+json or application/json-patch+json",
                    kind.resource_name()
                )));
            }
            *target = crate::patch::strategic_merge(kind, target, patch)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            Ok(())
        }
        BodyFormat::JsonPatch => {
            let operations: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(target, &operations).map_err(|e| {
                let mut err = ApiError::invalid("", "", vec![]);
                err.message =
                    format!("the server rejected our request due to an error in our request: {e}");
                err
            })
        }
        _ => Err(ApiError::unsupported_media_type("unsupported patch type")),
    }
}

async fn patch(ctx: &mut Ctx, name: &str, body: &[u8]) -> Result<(StatusCode, Value), ApiError> {
    let format = body_format(&ctx.headers)?;
    let patch = parse_patch(format, body)?;
    if format == BodyFormat::ApplyPatch {
        return server_side_apply(ctx, name, patch).await;
    }
    Ok((StatusCode::OK, patch_with(ctx, name, format, &patch).await?))
}

/// A server-side apply: creates the object when it is absent (201), otherwise merges the
/// applied configuration under field management (see `managed_fields`). Retried on write
/// conflicts unless the configuration names a resourceVersion.
async fn server_side_apply(
    ctx: &mut Ctx,
    name: &str,
    applied: Value,
) -> Result<(StatusCode, Value), ApiError> {
    let api_version = applied.get("apiVersion").and_then(Value::as_str);
    let kind = applied.get("kind").and_then(Value::as_str);
    if api_version.is_none_or(str::is_empty) || kind.is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "an apply configuration must set apiVersion and kind",
        ));
    }
    if kind != Some(ctx.kind.kind.as_str()) {
        return Err(ApiError::bad_request(format!(
            "the apply configuration's kind {:?} does not match the resource's kind {:?}",
            kind.unwrap_or_default(),
            ctx.kind.kind
        )));
    }
    let body_name = object_name(&applied);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if ctx.query.get("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "PATCH requests with an apply configuration need a fieldManager parameter",
        ));
    }
    let force = ctx.query.bool("force")?;
    let explicit_rv = applied
        .pointer("/metadata/resourceVersion")
        .is_some_and(|v| !v.is_null());
    let who = writer(ctx);
    ctx.applying = true;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let live = match get(ctx, name).await {
            Ok(live) => Some(live),
            Err(err) if err.reason == "NotFound" && ctx.path.subresource.is_none() => None,
            Err(err) => return Err(err),
        };
        let mut object = managed_fields::apply(&ctx.kind, live.as_ref(), &applied, &who, force)?;
        if object.get("metadata").is_none_or(|m| !m.is_object()) {
            object["metadata"] = json!({});
        }
        object["metadata"]["name"] = Value::String(name.to_string());
        let result = match live {
            None => create(ctx, object)
                .await
                .map(|created| (StatusCode::CREATED, created.object)),
            Some(live) => {
                if !explicit_rv {
                    object["metadata"]["resourceVersion"] =
                        live["metadata"]["resourceVersion"].clone();
                }
                write_update(ctx, name, object, live)
                    .await
                    .map(|updated| (StatusCode::OK, updated))
            }
        };
        match result {
            Err(err)
                if matches!(err.reason, "Conflict" | "AlreadyExists")
                    && err.details.causes.is_empty()
                    && !explicit_rv
                    && attempts < 5 =>
            {
                continue
            }
            other => return other,
        }
    }
}

/// A JSON, merge or strategic merge patch, retried on write conflicts unless the patch names
/// a resourceVersion.
async fn patch_with(
    ctx: &mut Ctx,
    name: &str,
    format: BodyFormat,
    patch: &Value,
) -> Result<Value, ApiError> {
    let explicit_rv = patch
        .pointer("/metadata/resourceVersion")
        .is_some_and(|v| !v.is_null());
    let mut attempts = 0;
    loop {
        attempts += 1;
        let old = get(ctx, name).await?;
        let mut target = old.clone();
        apply_patch(&ctx.kind, format, &mut target, patch)?;
        if !target.is_object() {
            return Err(ApiError::bad_request(
                "the patched object is not a JSON object",
            ));
        }
        if !explicit_rv {
            target["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        }
        match write_update(ctx, name, target, old).await {
            Err(err) if err.reason == "Conflict" && !explicit_rv && attempts < 5 => continue,
            other => return other,
        }
    }
}

/// Where a kind keeps its scale: `spec.replicas`, `status.replicas` and a label selector
/// object at `spec.selector` for the built-in kinds; the CRD's paths for custom kinds.
fn scale_pointers(kind: &ResourceKind) -> (String, String, Option<String>) {
    match kind.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        Some(paths) => (
            json_path_pointer(&paths.spec_replicas),
            json_path_pointer(&paths.status_replicas),
            paths.label_selector.as_deref().map(json_path_pointer),
        ),
        None => ("/spec/replicas".into(), "/status/replicas".into(), None),
    }
}

fn scale_of(kind: &ResourceKind, object: &Value) -> Value {
    let (spec_replicas, status_replicas, selector_path) = scale_pointers(kind);
    let selector_text = match selector_path {
        // A custom kind's selector path holds the selector in its string form.
        Some(path) => object
            .pointer(&path)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None if kind.custom.is_some() => String::new(),
        None => {
            let selector = object
                .pointer("/spec/selector")
                .cloned()
                .unwrap_or(Value::Null);
            serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>(
                selector,
            )
            .ok()
            .and_then(|ls| crate::selector::LabelSelector::try_from(&ls).ok())
            .map(|s| s.to_string())
            .unwrap_or_default()
        }
    };
    let default_replicas = if kind.custom.is_some() { 0 } else { 1 };
    let meta = &object["metadata"];
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"], "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": object.pointer(&spec_replicas).and_then(Value::as_i64).unwrap_or(default_replicas)},
        "status": {"replicas": object.pointer(&status_replicas).and_then(Value::as_i64).unwrap_or(0), "selector": selector_text},
    })
}

/// Sets the value at a JSON pointer, creating the objects on the way.
fn set_at_pointer(target: &mut Value, pointer: &str, value: Value) {
    let mut current = target;
    let steps: Vec<&str> = pointer.split('/').skip(1).collect();
    for (i, raw) in steps.iter().enumerate() {
        let step = raw.replace("~1", "/").replace("~0", "~");
        if !current.is_object() {
            *current = json!({});
        }
        let Value::Object(map) = current else {
            return;
        };
        if i + 1 == steps.len() {
            map.insert(step, value);
            return;
        }
        current = map.entry(step).or_insert_with(|| json!({}));
    }
}

async fn write_scale(
    ctx: &mut Ctx,
    name: &str,
    input: Value,
    patch_format: Option<BodyFormat>,
) -> Result<Value, ApiError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let old = get(ctx, name).await?;
        let mut scale = scale_of(&ctx.kind, &old);
        match patch_format {
            Some(format) => apply_patch(&ctx.kind, format, &mut scale, &input)?,
            None => scale = input.clone(),
        }
        let replicas = match scale.pointer("/spec/replicas") {
            Some(Value::Number(n))
                if n.as_i64()
                    .is_some_and(|r| r >= 0 && r <= i64::from(i32::MAX)) =>
            {
                n.as_i64().unwrap_or(0)
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    "Scale",
                    name,
                    vec![Cause::invalid(
                        "spec.replicas",
                        other,
                        "must be greater than or equal to 0",
                    )],
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    "Scale",
                    name,
                    vec![Cause::required("spec.replicas")],
                ))
            }
        };
        let precondition = scale
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let current_rv = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if patch_format.is_none() && precondition.as_deref().is_some_and(|rv| rv != current_rv) {
            return Err(ApiError::conflict(&ctx.kind.resource_name(), name, "the object has been modified; please apply your changes to the latest version and try again"));
        }
        let mut target = old.clone();
        set_at_pointer(&mut target, &scale_pointers(&ctx.kind).0, json!(replicas));
        let saved_sub = ctx.path.subresource.take();
        let result = write_update(ctx, name, target, old).await;
        ctx.path.subresource = saved_sub;
        match result {
            Ok(updated) => return Ok(scale_of(&ctx.kind, &updated)),
            Err(err) if err.reason == "Conflict" && attempts < 5 => continue,
            Err(err) => return Err(err),
        }
    }
}

async fn bind(ctx: &mut Ctx, name: &str, binding: Value) -> Result<Value, ApiError> {
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let Some(node) = node else {
        return Err(ApiError::invalid(
            "Binding",
            name,
            vec![Cause::required("target.name")],
        ));
    };
    let target_kind = binding.pointer("/target/kind").unwrap_or(&Value::Null);
    if !matches!(target_kind.as_str(), None | Some("" | "Node")) {
        return Err(ApiError::invalid(
            "Binding",
            name,
            vec![Cause::not_supported("target.kind", target_kind, &["Node"])],
        ));
    }
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let refused = |refusal| match refusal {
        Refusal::AssignedTo(current) => ApiError::conflict(
            "pods/binding",
            name,
            &format!("pod {name} is already assigned to node {current:?}"),
        ),
        Refusal::Deleting => ApiError::conflict(
            "pods/binding",
            name,
            "pod is being deleted, cannot be assigned to a host",
        ),
    };
    // A concurrent write to the pod (a status patch) is no reason to refuse the binding:
    // re-read and retry, as Kubernetes' guaranteed update does. The first attempt starts from
    // the watch cache's copy (a scheduler binds pods it has just seen created, so the cache
    // rarely trails); the write is conditional on that copy's resourceVersion, so a stale copy
    // only costs a retry from storage.
    //
    // As Kubernetes' binding storage does, the stored pod is written with just the node and
    // the PodScheduled condition changed: no pod admission, validation or field-manager
    // tracking runs (the Binding itself was checked above). Setting the node changes the spec.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let namespace = namespace_of(ctx);
        let cached = match (attempts, &namespace) {
            (1, Some(namespace)) => ctx
                .state
                .cache
                .peek_json(&ctx.kind, &format!("{namespace}/{name}")),
            _ => None,
        };
        // The cached JSON edited as it is, when it can be.
        let stored = cached.as_ref().and_then(ObjectBytes::stored_parts);
        if let (Some((json, revision)), Some(namespace), None) = (stored, &namespace, ctx.kind.ttl)
        {
            if let Some(bound) = pod_binding::bind_stored(&json, &node, &now) {
                let bound = bound.map_err(refused)?;
                if ctx.dry_run {
                    break;
                }
                let key = crate::storage::object_key(&ctx.kind, Some(namespace), name)?;
                let written = ctx
                    .state
                    .storage
                    .write_encoded(&ctx.kind, &key, name.to_string(), bound, revision, None)
                    .await;
                match written {
                    Err(StorageError::Conflict { .. }) if attempts < 5 => continue,
                    other => {
                        other?;
                        break;
                    }
                }
            }
        }
        let mut pod = match cached {
            Some(cached) => serde_json::from_slice(&cached.to_bytes())
                .map_err(|e| ApiError::internal(format!("cached pod {name}: {e}")))?,
            None => get(ctx, name).await?,
        };
        pod_binding::bind_value(&mut pod, &node, &now).map_err(refused)?;
        if ctx.dry_run {
            break;
        }
        // Changed in place: the write is conditional on the resourceVersion it was read at.
        match ctx.state.storage.write_back(&ctx.kind, pod, true).await {
            Err(StorageError::Conflict { .. }) if attempts < 5 => continue,
            other => {
                other?;
                break;
            }
        }
    }
    Ok(
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}

/// DeleteOptions gathered from the body and the query.
pub(super) struct DeleteOptions {
    grace: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
}

impl DeleteOptions {
    /// A plain deletion with background propagation (what the server's own cleanups use).
    pub(super) fn background() -> DeleteOptions {
        DeleteOptions {
            grace: None,
            propagation: Some("Background".into()),
            uid: None,
            resource_version: None,
        }
    }
}

pub(super) fn delete_options(ctx: &Ctx, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let parsed = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        parse_body(body, BodyFormat::Json)?
    };
    let options = parsed.unwrap_or(Value::Null);
    let grace = match ctx.query.get("gracePeriodSeconds") {
        Some(v) => Some(
            v.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {v:?}")))?,
        ),
        None => options.get("gracePeriodSeconds").and_then(Value::as_i64),
    };
    let mut propagation = ctx
        .query
        .get("propagationPolicy")
        .map(str::to_string)
        .or_else(|| {
            options
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    if options.get("orphanDependents").and_then(Value::as_bool) == Some(true)
        || ctx.query.bool("orphanDependents").unwrap_or(false)
    {
        propagation = Some("Orphan".into());
    }
    if let Some(p) = &propagation {
        if !matches!(p.as_str(), "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::bad_request(format!(
                "invalid propagationPolicy {p:?}: must be Orphan, Background or Foreground"
            )));
        }
    }
    Ok(DeleteOptions {
        grace,
        propagation,
        uid: options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        resource_version: options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

async fn delete(ctx: &mut Ctx, name: &str, body: &[u8]) -> Result<(StatusCode, Value), ApiError> {
    let options = delete_options(ctx, body)?;
    let object = get(ctx, name).await?;
    Ok((
        StatusCode::OK,
        delete_object(ctx, name, object, &options).await?,
    ))
}

pub(super) async fn delete_object(
    ctx: &mut Ctx,
    name: &str,
    object: Value,
    options: &DeleteOptions,
) -> Result<Value, ApiError> {
    let resource = ctx.kind.resource_name();
    if let Some(uid) = &options.uid {
        let actual = object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        if uid != actual {
            return Err(ApiError::conflict(
                &resource,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                ),
            ));
        }
    }
    if let Some(rv) = &options.resource_version {
        let actual = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if rv != actual {
            return Err(ApiError::conflict(&resource, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}")));
        }
    }
    for plugin in &ctx.state.admission.clone() {
        plugin
            .validate(
                &admission_request(ctx, Operation::Delete, name, Some(&object)),
                &object,
            )
            .await?;
    }
    let now = k8s_openapi::jiff::Timestamp::now();
    let stamp = |seconds: i64| {
        (now + k8s_openapi::jiff::SignedDuration::from_secs(seconds))
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let already_deleting = object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null());

    if is_kind(&ctx.kind, "", "Namespace") {
        if already_deleting {
            // Deleting again re-runs the (idempotent) finalization, e.g. after a restart.
            if !ctx.dry_run {
                finalize_namespace(ctx.state.clone(), ctx.registry.clone(), name.to_string());
            }
            return Ok(object);
        }
        let mut terminating = object.clone();
        terminating["metadata"]["deletionTimestamp"] = json!(stamp(0));
        terminating["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        terminating["status"]["phase"] = json!("Terminating");
        if ctx.dry_run {
            return Ok(terminating);
        }
        let updated = ctx.state.storage.update(&ctx.kind, terminating).await?;
        finalize_namespace(ctx.state.clone(), ctx.registry.clone(), name.to_string());
        return Ok(updated);
    }

    let mut finalizers: Vec<Value> = object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let extra = match options.propagation.as_deref() {
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        _ => None,
    };
    if let Some(extra) = extra {
        if !finalizers.iter().any(|f| f == extra) {
            finalizers.push(json!(extra));
        }
    }
    let pod_grace = if is_kind(&ctx.kind, "", "Pod") {
        let scheduled = object
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let terminal = matches!(
            object.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        let grace = options
            .grace
            .or_else(|| {
                object
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30);
        (scheduled && !terminal && grace > 0).then_some(grace)
    } else {
        None
    };
    if !finalizers.is_empty() || pod_grace.is_some() {
        let mut marked = object.clone();
        let grace = pod_grace.unwrap_or(0);
        let old_grace = object
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        // A deletion with a shorter grace period (down to zero: the kubelet confirming the pod
        // stopped) shortens a pending graceful deletion.
        let shortened = already_deleting
            && match pod_grace {
                Some(g) => old_grace.is_none_or(|old| g < old),
                None => options.grace == Some(0) && old_grace.is_some_and(|old| old > 0),
            };
        if !already_deleting || shortened {
            marked["metadata"]["deletionTimestamp"] = json!(stamp(grace));
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        }
        marked["metadata"]["finalizers"] = Value::Array(finalizers);
        // Deleting again what is already being deleted, with nothing to change, writes nothing
        // (a kubelet repeating its final delete must not make an endless stream of updates).
        let unchanged = marked.pointer("/metadata") == object.pointer("/metadata")
            || (already_deleting
                && marked.pointer("/metadata/deletionTimestamp")
                    == object.pointer("/metadata/deletionTimestamp")
                && marked.pointer("/metadata/deletionGracePeriodSeconds")
                    == object.pointer("/metadata/deletionGracePeriodSeconds")
                && marked.pointer("/metadata/finalizers")
                    == object
                        .pointer("/metadata/finalizers")
                        .or(Some(&Value::Array(Vec::new()))));
        if ctx.dry_run || unchanged {
            return Ok(marked);
        }
        return Ok(ctx.state.storage.update(&ctx.kind, marked).await?);
    }
    if ctx.dry_run {
        return Ok(object);
    }
    remove_now(ctx, name, &object).await
}

async fn remove_now(ctx: &Ctx, name: &str, object: &Value) -> Result<Value, ApiError> {
    let expected = object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse().ok());
    let deleted = ctx
        .state
        .storage
        .delete(&ctx.kind, namespace_of(ctx), name, expected)
        .await?;
    if is_kind(&ctx.kind, "", "Service") {
        if let Err(err) = ctx.state.services.release_for(&deleted).await {
            tracing::warn!(error = %err, service = name, "could not release the service's addresses");
        }
    }
    Ok(deleted)
}

async fn delete_collection(ctx: &mut Ctx, body: &[u8]) -> Result<Value, ApiError> {
    let options = delete_options(ctx, body)?;
    let listed = list::select_all(ctx).await?;
    let mut deleted = Vec::new();
    for object in listed {
        let name = object_name(&object);
        match delete_object(ctx, &name, object, &options).await {
            Ok(gone) => deleted.push(gone),
            Err(err) if err.code == 404 => {}
            Err(err) => return Err(err),
        }
    }
    Ok(
        json!({"kind": format!("{}List", ctx.kind.kind), "apiVersion": ctx.kind.api_version(), "metadata": {}, "items": deleted}),
    )
}

/// Empties a terminating namespace, then removes it. Runs in the background, owned by the API
/// server (aborted when it goes away). Everything in the namespace is deleted as a client's
/// DELETE would be — pods gracefully, finalizers honoured, dependents left to the garbage
/// collector — and the namespace goes once nothing is left; every step is an ordinary
/// deletion, so it is safe to repeat after a restart.
/// The context of a request the server makes itself, as `user`, on one object.
pub(crate) fn system_ctx(
    state: &Arc<ApiState>,
    registry: &Arc<Registry>,
    kind: &Arc<ResourceKind>,
    namespace: Option<&str>,
    name: &str,
    user: &str,
) -> Ctx {
    Ctx {
        state: state.clone(),
        registry: registry.clone(),
        user: UserInfo {
            name: user.into(),
            groups: vec!["system:serviceaccounts".into()],
        },
        query: Query::default(),
        headers: HeaderMap::new(),
        kind: kind.clone(),
        path: ResourcePath {
            group: kind.group.clone(),
            version: kind.version.clone(),
            namespace: namespace.map(str::to_string),
            plural: kind.plural.clone(),
            name: Some(name.to_string()),
            subresource: None,
        },
        dry_run: false,
        warnings: Vec::new(),
        field_validation: FieldValidation::Ignore,
        body_problems: Vec::new(),
        applying: false,
        websocket: None,
        upgrade: None,
    }
}

pub(crate) fn finalize_namespace(state: Arc<ApiState>, registry: Arc<Registry>, namespace: String) {
    let weak = Arc::downgrade(&state);
    let task = tokio::spawn(async move {
        let mut pause = std::time::Duration::from_millis(20);
        loop {
            let Some(state) = weak.upgrade() else { return };
            let mut remaining = 0;
            for kind in registry.kinds().filter(|k| k.namespaced) {
                let Ok(listed) = state
                    .storage
                    .list(kind, Some(&namespace), None, None, None)
                    .await
                else {
                    continue;
                };
                for object in listed.items {
                    remaining += 1;
                    let deleting = object
                        .pointer("/metadata/deletionTimestamp")
                        .is_some_and(|t| !t.is_null());
                    if deleting {
                        continue;
                    }
                    let name = object_name(&object);
                    let mut ctx = system_ctx(
                        &state,
                        &registry,
                        kind,
                        Some(&namespace),
                        &name,
                        "system:serviceaccount:kube-system:namespace-controller",
                    );
                    let options = DeleteOptions::background();
                    if let Err(err) = delete_object(&mut ctx, &name, object, &options).await {
                        if err.code != 404 && err.code != 409 {
                            tracing::warn!(error = %err.message, namespace = %namespace, "could not delete namespace content");
                        }
                    }
                }
            }
            if remaining == 0 {
                if let Some(namespaces) = registry.get("", "v1", "namespaces") {
                    match state
                        .storage
                        .delete(namespaces, None, &namespace, None)
                        .await
                    {
                        Ok(_) | Err(StorageError::NotFound { .. }) => {}
                        Err(err) => {
                            tracing::warn!(error = %err, namespace = %namespace, "could not remove the namespace")
                        }
                    }
                }
                return;
            }
            drop(state);
            // Wait for graceful deletions and finalizers.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(2));
        }
    });
    state.own_task(task);
}

async fn component_statuses(ctx: &Ctx, verb: &str) -> Result<Response<Body>, ApiError> {
    let mut value = super::component_status::serve(ctx, verb).await?;
    if let Some(include) = table_wanted(ctx) {
        let items = match value.get("items").and_then(Value::as_array) {
            Some(items) => items.clone(),
            None => vec![value],
        };
        value = super::table::table(&ctx.kind, &items, "", None, true, include);
    }
    let warnings = vec!["v1 ComponentStatus is deprecated in v1.19+".to_string()];
    Ok(json_response(StatusCode::OK, &value, &warnings))
}
