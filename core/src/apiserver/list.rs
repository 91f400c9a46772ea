//! Lists: label and field selection, `limit`/`continue` paging with opaque tokens pinned to one
//! revision, `resourceVersion`/`resourceVersionMatch` semantics, and Table output.

use super::handler::{table_wanted, Ctx};
pub(crate) use super::selection::Selection;
use super::ApiError;
use crate::store::Revision;
use serde_json::{json, Value};

fn encode_token(revision: Revision, start: &str) -> String {
    json!({"rv": revision, "start": start})
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_token(token: &str) -> Result<(Revision, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: the token is malformed");
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    match (value["rv"].as_i64(), value["start"].as_str()) {
        (Some(rv), Some(start)) => Ok((rv, start.to_string())),
        _ => Err(bad()),
    }
}

fn list_namespace<'a>(ctx: &'a Ctx, selection: &'a Selection) -> Option<&'a str> {
    ctx.path
        .namespace
        .as_deref()
        .or_else(|| selection.pinned_namespace().filter(|_| ctx.kind.namespaced))
}

/// The revision a list reads at, from `resourceVersion` and `resourceVersionMatch`.
async fn read_revision(ctx: &Ctx) -> Result<Option<Revision>, ApiError> {
    let rv = ctx.query.get("resourceVersion").unwrap_or("");
    let matching = ctx.query.get("resourceVersionMatch").unwrap_or("");
    if rv.is_empty() || rv == "0" {
        if matching == "Exact" {
            return Err(ApiError::bad_request(
                "resourceVersionMatch=Exact needs a non-zero resourceVersion",
            ));
        }
        return Ok(None);
    }
    let revision: Revision = rv
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
    match matching {
        "Exact" => Ok(Some(revision)),
        "" | "NotOlderThan" => {
            let current = ctx.state.storage.store().current_revision().await?;
            if revision > current {
                let mut err = ApiError::unavailable(format!(
                    "Too large resource version: {revision}, current: {current}"
                ));
                err.code = 504;
                err.reason = "Timeout";
                return Err(err);
            }
            Ok(None)
        }
        other => Err(ApiError::bad_request(format!(
            "unsupported resourceVersionMatch {other:?}"
        ))),
    }
}

/// Reads selected objects a page at a time: at most `limit`, after `start`, at `revision`.
async fn select_page(
    ctx: &Ctx,
    selection: &Selection,
    limit: Option<usize>,
    mut start: Option<String>,
    revision: Option<Revision>,
) -> Result<(Vec<Value>, Revision, Option<String>), ApiError> {
    let namespace = list_namespace(ctx, selection);
    let mut revision = revision;
    let mut items = Vec::new();
    let chunk = limit.map_or(1000, |l| l.max(100));
    loop {
        let page = ctx
            .state
            .storage
            .list(
                &ctx.kind,
                namespace,
                Some(chunk),
                start.as_deref(),
                revision,
            )
            .await?;
        revision = Some(page.revision);
        for object in page.items {
            if selection.matches(&ctx.kind, &object) {
                items.push(object);
            }
        }
        start = page.continue_after;
        if let Some(limit) = limit {
            if items.len() >= limit {
                // Continue after the last object returned, which may be before the page's end.
                let cut: Vec<Value> = items.drain(..limit).collect();
                let more = !items.is_empty() || start.is_some();
                let next = more.then(|| continuation_key(ctx, namespace, cut.last()));
                return Ok((cut, page.revision, next.flatten()));
            }
        }
        if start.is_none() {
            return Ok((items, page.revision, None));
        }
    }
}

/// The storage continuation key of an object: its name, prefixed by its namespace when the list
/// spans namespaces.
fn continuation_key(ctx: &Ctx, namespace: Option<&str>, last: Option<&Value>) -> Option<String> {
    let last = last?;
    let name = last.pointer("/metadata/name").and_then(Value::as_str)?;
    match (ctx.kind.namespaced, namespace) {
        (true, None) => Some(format!(
            "{}/{name}",
            last.pointer("/metadata/namespace")
                .and_then(Value::as_str)?
        )),
        _ => Some(name.to_string()),
    }
}

/// Every selected object at the current revision.
pub(crate) async fn select_all(ctx: &Ctx) -> Result<Vec<Value>, ApiError> {
    let selection = Selection::from_query(ctx)?;
    Ok(select_page(ctx, &selection, None, None, None).await?.0)
}

/// The current selected objects and the revision they were read at (for watch starts).
pub(crate) async fn snapshot(
    ctx: &Ctx,
    selection: &Selection,
) -> Result<(Vec<Value>, Revision), ApiError> {
    let (items, revision, _) = select_page(ctx, selection, None, None, None).await?;
    Ok((items, revision))
}

/// `GET` on a collection. `resourceVersion=0` without `continue` is served from the watch
/// cache (any recent state will do, as in Kubernetes; `limit` is then ignored).
pub(crate) async fn list(ctx: &Ctx) -> Result<Value, ApiError> {
    let selection = Selection::from_query(ctx)?;
    let from_cache = ctx.query.get("resourceVersion") == Some("0")
        && ctx.query.get("continue").is_none_or(str::is_empty);
    if from_cache {
        let namespace = list_namespace(ctx, &selection);
        if let Ok((items, revision)) = ctx
            .state
            .cache
            .snapshot(&ctx.kind, namespace, &selection)
            .await
        {
            return Ok(render(ctx, items, revision, None));
        }
    }
    let limit = ctx
        .query
        .u64("limit")?
        .filter(|l| *l > 0)
        .map(|l| l as usize);
    let (start, revision) = match ctx.query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, start) = decode_token(token)?;
            (Some(start), Some(rv))
        }
        None => (None, read_revision(ctx).await?),
    };
    let (items, revision, next) = match select_page(ctx, &selection, limit, start, revision).await {
        Err(err) if err.code == 410 => {
            return Err(ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."))
        }
        other => other?,
    };
    let token = next.map(|start| encode_token(revision, &start));
    Ok(render(ctx, items, revision, token))
}

fn render(ctx: &Ctx, items: Vec<Value>, revision: Revision, token: Option<String>) -> Value {
    if let Some(include) = table_wanted(ctx) {
        return super::table::table(
            &ctx.kind,
            &items,
            &revision.to_string(),
            token.as_deref(),
            true,
            include,
        );
    }
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(token) = token {
        metadata["continue"] = json!(token);
    }
    // Built by hand: `json!` would serialize `items` from a reference, a deep copy of the page.
    let mut list = serde_json::Map::new();
    list.insert("kind".into(), json!(format!("{}List", ctx.kind.kind)));
    list.insert("apiVersion".into(), json!(ctx.kind.api_version()));
    list.insert("metadata".into(), metadata);
    list.insert("items".into(), Value::Array(items));
    Value::Object(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let token = encode_token(42, "default/web-1");
        assert_eq!(
            decode_token(&token).unwrap(),
            (42, "default/web-1".to_string())
        );
        for bad in ["", "zz", "abc", "7b7d"] {
            assert!(decode_token(bad).is_err(), "{bad:?}");
        }
    }
}
