//! Watches: a chunked stream of newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`,
//! `BOOKMARK`, `ERROR`). Without a resourceVersion (or with `0`) the stream starts with a
//! synthetic `ADDED` for every selected object; from `N` it carries exactly the changes after
//! `N`, or an `ERROR` 410 when that history is gone. Selectors apply to transitions: an object
//! that stops matching is reported `DELETED`, one that starts matching `ADDED`. The stream stays
//! open until the client leaves or `timeoutSeconds` passes.

use super::handler::{table_wanted, Ctx};
use super::list::snapshot;
use super::selection::Selection;
use super::table;
use super::watch_cache::{CacheMiss, Delivery, Start, Subscription};
use super::ApiError;
use crate::registry::ResourceKind;
use crate::storage::{ObjectEvent, StorageError};
use crate::store::Revision;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Response, StatusCode};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One watch connection's state.
struct WatchState {
    _open: super::metrics::OpenWatch,
    events: Option<BoxStream<'static, Result<ObjectEvent, StorageError>>>,
    pending: VecDeque<Bytes>,
    selection: Selection,
    kind: Arc<ResourceKind>,
    /// Set when the client asked for Table rows: what each row carries.
    table: Option<table::RowObject>,
    first_row: bool,
    bookmarks: bool,
    deadline: Option<Instant>,
}

impl WatchState {
    fn line(&mut self, event_type: &str, object: &Value) -> Bytes {
        let include = self
            .table
            .filter(|_| event_type != "BOOKMARK" && event_type != "ERROR");
        let object = if let Some(include) = include {
            let rv = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let rendered = table::table(
                &self.kind,
                std::slice::from_ref(object),
                &rv,
                None,
                self.first_row,
                include,
            );
            self.first_row = false;
            rendered
        } else {
            object.clone()
        };
        let mut line =
            serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    /// The line for one store event, if the client should see it.
    fn render(&mut self, event: ObjectEvent) -> Option<Bytes> {
        let matches = |state: &Self, o: &Value| state.selection.matches(&state.kind, o);
        match event {
            ObjectEvent::Added(o) => matches(self, &o).then(|| self.line("ADDED", &o)),
            ObjectEvent::Modified { current, previous } => match (matches(self, &previous), matches(self, &current)) {
                (true, true) => Some(self.line("MODIFIED", &current)),
                (false, true) => Some(self.line("ADDED", &current)),
                (true, false) => Some(self.line("DELETED", &current)),
                (false, false) => None,
            },
            ObjectEvent::Deleted(o) => matches(self, &o).then(|| self.line("DELETED", &o)),
            ObjectEvent::Progress(revision) => self.bookmarks.then(|| {
                let bookmark = json!({"kind": self.kind.kind, "apiVersion": self.kind.api_version(), "metadata": {"resourceVersion": revision.to_string()}});
                self.line("BOOKMARK", &bookmark)
            }),
        }
    }

    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, WatchState)> {
        if let Some(line) = self.pending.pop_front() {
            return Some((Ok(line), self));
        }
        loop {
            let events = self.events.as_mut()?;
            let item = match self.deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, events.next())
                    .await
                    .ok()?,
                None => events.next().await,
            }?;
            match item {
                Ok(event) => {
                    if let Some(line) = self.render(event) {
                        return Some((Ok(line), self));
                    }
                }
                Err(err) => {
                    let status = ApiError::from(err).status();
                    let line = self.line("ERROR", &status);
                    self.events = None;
                    return Some((Ok(line), self));
                }
            }
        }
    }
}

/// A watch served from the watch cache.
struct CachedWatch {
    _open: super::metrics::OpenWatch,
    pending: VecDeque<Delivery>,
    live: Option<tokio::sync::mpsc::Receiver<Delivery>>,
    kind: Arc<ResourceKind>,
    /// Set when the client asked for Table rows: what each row carries.
    table: Option<table::RowObject>,
    first_row: bool,
    deadline: Option<Instant>,
}

impl CachedWatch {
    fn line(&mut self, delivery: Delivery) -> Bytes {
        let mut line = Vec::new();
        match delivery {
            Delivery::Event(event_type, object) if self.table.is_some() => {
                let value = object.value();
                let rv = value
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let rendered = table::table(
                    &self.kind,
                    std::slice::from_ref(&value),
                    &rv,
                    None,
                    self.first_row,
                    self.table.unwrap_or_default(),
                );
                self.first_row = false;
                line = serde_json::to_vec(&json!({"type": event_type, "object": rendered}))
                    .unwrap_or_default();
            }
            Delivery::Event(event_type, object) => {
                // The object's encoded bytes are shared by every watcher; only the envelope is new.
                line.extend_from_slice(b"{\"type\":\"");
                line.extend_from_slice(event_type.as_bytes());
                line.extend_from_slice(b"\",\"object\":");
                object.bytes.write_to(&mut line);
                line.push(b'}');
            }
            Delivery::Bookmark(revision) => {
                let bookmark = json!({"type": "BOOKMARK", "object": {"kind": self.kind.kind, "apiVersion": self.kind.api_version(), "metadata": {"resourceVersion": revision.to_string()}}});
                line = serde_json::to_vec(&bookmark).unwrap_or_default();
            }
        }
        line.push(b'\n');
        Bytes::from(line)
    }

    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, CachedWatch)> {
        if let Some(delivery) = self.pending.pop_front() {
            let line = self.line(delivery);
            return Some((Ok(line), self));
        }
        let live = self.live.as_mut()?;
        let delivery = match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, live.recv()).await.ok()?,
            None => live.recv().await,
        }?;
        let line = self.line(delivery);
        Some((Ok(line), self))
    }
}

fn streaming(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `GET …?watch=true`: from the watch cache when it can serve the start point, else from the
/// store directly.
pub(crate) async fn watch(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let selection = Selection::from_query(&ctx)?;
    let bookmarks = ctx.query.bool("allowWatchBookmarks")?;
    let deadline = ctx
        .query
        .u64("timeoutSeconds")?
        .filter(|s| *s > 0)
        .map(|s| Instant::now() + Duration::from_secs(s));
    let rv = ctx.query.get("resourceVersion").unwrap_or("").to_string();
    let namespace = ctx.path.namespace.clone().or_else(|| {
        selection
            .pinned_namespace()
            .filter(|_| ctx.kind.namespaced)
            .map(str::to_string)
    });
    let start = if rv.is_empty() || rv == "0" {
        Start::Now
    } else {
        Start::After(
            rv.parse::<Revision>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        )
    };
    let cached = ctx
        .state
        .cache
        .subscribe(
            &ctx.kind,
            selection.clone(),
            namespace.clone(),
            bookmarks,
            start,
        )
        .await;
    if let Err(CacheMiss::TooOld(oldest)) = cached {
        // As Kubernetes' watch cache: the client relists (kube-runtime and client-go do).
        let status =
            ApiError::expired(format!("too old resource version: {rv} ({oldest})")).status();
        let line = format!("{}\n", json!({"type": "ERROR", "object": status}));
        return Ok(streaming(Body::from(line)));
    }
    if let Ok((Subscription { initial, live }, _)) = cached {
        let state = CachedWatch {
            _open: ctx.state.metrics.open_watch(),
            pending: initial.into(),
            live: Some(live),
            kind: ctx.kind.clone(),
            table: table_wanted(&ctx),
            first_row: true,
            deadline,
        };
        return Ok(streaming(Body::from_stream(futures::stream::unfold(
            state,
            CachedWatch::next,
        ))));
    }
    let (initial, start): (Vec<Value>, Revision) = if rv.is_empty() || rv == "0" {
        snapshot(&ctx, &selection).await?
    } else {
        let start = rv
            .parse::<Revision>()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
        (Vec::new(), start)
    };
    let mut state = WatchState {
        _open: ctx.state.metrics.open_watch(),
        events: None,
        pending: VecDeque::new(),
        selection,
        kind: ctx.kind.clone(),
        table: table_wanted(&ctx),
        first_row: true,
        bookmarks,
        deadline,
    };
    for object in &initial {
        let line = state.line("ADDED", object);
        state.pending.push_back(line);
    }
    match ctx
        .state
        .storage
        .watch(&ctx.kind, namespace.as_deref(), start)
        .await
    {
        Ok(events) => state.events = Some(events.boxed()),
        Err(err) => {
            let err = ApiError::from(err);
            if err.code != 410 {
                return Err(err);
            }
            let status = ApiError::expired(format!("too old resource version: {start}")).status();
            let line = state.line("ERROR", &status);
            state.pending.push_back(line);
        }
    }
    Ok(streaming(Body::from_stream(futures::stream::unfold(
        state,
        WatchState::next,
    ))))
}
