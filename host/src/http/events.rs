//! Routes of the event pipeline: publishing events, streaming a key's
//! output, subscriptions, dead letters and quarantine.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::{Value, json};

use super::request::Caller;
use super::{AppError, AuthErrors, ErrorBody, body_bytes, path, query};
use crate::bus::{Published, StartAt};
use crate::pipeline::dlq::DeadLetterSelector;
use crate::pipeline::{Consumer, Delivery, SubscribeRequest};
use crate::producer::{ParsedEvents, parse_events};
use crate::runtime::Host;

/// Query pairs as given, in order.
type Pairs = Vec<(String, String)>;

/// Publish events.
///
/// Needs role `ingest`. One event or an array of events, each checked on its
/// own; answers which were accepted (with their sequence numbers), which
/// were duplicates and which rejected (422 when none was accepted). With a
/// data directory an accepted event is in the durable log before the answer
/// (flushed to disk with `--fsync always`).
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    request_body(content = ParsedEvents, content_type = "application/json",
        description = "One event, or an array of at most 10000 events."),
    responses(
        (status = 200, description = "`accepted` (`index`, `event_id`, `seq`), `duplicates` (`index`, `event_id`) and `rejected` (`index`, `event_id`, `reason`).", body = Object),
        (status = 400, description = "The body as a whole is unusable (not JSON, not an event or array, too many events).", body = ErrorBody),
        AuthErrors,
        (status = 413, description = "The body is larger than 16 MiB.", body = ErrorBody),
        (status = 422, description = "No event accepted; `rejected` lists every event with its reason.", body = ErrorBody),
        (status = 500, description = "Internal error (logged).", body = ErrorBody),
        (status = 503, description = "The host is shutting down, or the event log cannot store events now (a full disk, an I/O error; the reason says which) (`unavailable`): nothing was accepted.", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    ),
    extensions(("x-weir-role" = json!("ingest"))),
)]
pub(super) async fn publish(
    State(host): State<Arc<Host>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let key = caller.key;
    // Once shutdown began, nothing more is accepted: an `accepted` answer
    // now could not be kept.
    if host.pipeline().is_closed() {
        return Err(AppError::Unavailable("the host is shutting down".into()));
    }
    let body = body_bytes(body)?;
    let parsed = parse_events(&body).map_err(AppError::BadRequest)?;
    let (positions, mut events): (Vec<usize>, Vec<_>) = parsed.valid.into_iter().unzip();
    // Published in the key's scope: seen by its datastore's keys (and the
    // host's), nobody else's.
    for e in &mut events {
        e.scope = key.datastore.clone();
    }
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let host2 = host.clone();
    let results = tokio::task::spawn_blocking(move || host2.pipeline().try_publish(events))
        .await
        .map_err(|e| AppError::Internal(e.into()))??;
    let mut accepted = Vec::new();
    let mut duplicates = Vec::new();
    for ((index, event_id), result) in positions.into_iter().zip(&ids).zip(results) {
        match result {
            Published::Accepted(seq) => accepted.push(AcceptedEvent {
                index,
                event_id,
                seq: Some(seq),
            }),
            Published::Duplicate => duplicates.push(AcceptedEvent {
                index,
                event_id,
                seq: None,
            }),
        }
    }
    if accepted.is_empty() && duplicates.is_empty() && !parsed.rejected.is_empty() {
        let detail = format!(
            "no event accepted; event {}: {}",
            parsed.rejected[0].index, parsed.rejected[0].reason
        );
        return Err(AppError::Rejected {
            detail,
            rejected: serde_json::to_value(&parsed.rejected)
                .map_err(|e| AppError::Internal(e.into()))?,
        });
    }
    let answer = PublishAnswer {
        accepted,
        duplicates,
        rejected: &parsed.rejected,
    };
    // Written straight from borrowed parts: a `Value` per event cost more
    // than the rest of the answer (measured with 1000-event batches).
    let body = serde_json::to_vec(&answer).map_err(|e| AppError::Internal(e.into()))?;
    Ok((
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response())
}

/// The answer of [`publish`].
#[derive(serde::Serialize)]
struct PublishAnswer<'a> {
    accepted: Vec<AcceptedEvent<'a>>,
    duplicates: Vec<AcceptedEvent<'a>>,
    rejected: &'a [crate::producer::RejectedEvent],
}

/// An accepted event (with its sequence number) or a duplicate (without).
#[derive(serde::Serialize)]
struct AcceptedEvent<'a> {
    index: usize,
    event_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// How the stream is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Sse,
    Ndjson,
}

fn format_for(headers: &HeaderMap) -> Result<Format, AppError> {
    let accept = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*")
        .to_ascii_lowercase();
    if accept.contains("text/event-stream") {
        Ok(Format::Sse)
    } else if ["ndjson", "jsonl", "application/json", "*/*"]
        .iter()
        .any(|t| accept.contains(t))
    {
        Ok(Format::Ndjson)
    } else {
        Err(AppError::NotAcceptable(format!(
            "cannot answer `{accept}`: the stream is `text/event-stream` (SSE) or `application/x-ndjson`"
        )))
    }
}

/// Subscribe to a key's output.
///
/// Needs role `query`. A long-lived stream of the key's envelopes and
/// notices (the first line is a `subscribed` notice): Server-Sent Events for
/// `Accept: text/event-stream` (each envelope's `id` is its sequence
/// number), otherwise NDJSON. Every query pair but `from` and `consumer` is
/// a parameter of the key. SSE resumes after `Last-Event-ID` when no `from`
/// is given. With `consumer=NAME` the stream resumes a named consumer after
/// its last acknowledgement (`POST /v1/consumers/{name}/ack`), across
/// reconnects and restarts: at-least-once.
#[utoipa::path(
    get,
    path = "/v1/keys/{key}/stream",
    tag = "keys",
    params(
        ("key" = String, Path, description = "The key, such as `fs.large_files`."),
        ("from" = Option<String>, Query, description = "Where to start: `earliest`, `latest` (default) or a sequence number; for a named consumer, where a new name starts."),
        ("consumer" = Option<String>, Query, description = "A named consumer (1 to 128 letters, digits, `.`, `_`, `-`): resumes after its last acknowledgement; bound to this key and these params."),
        ("params" = Option<std::collections::BTreeMap<String, String>>, Query, style = Form, explode,
            description = "The key's parameters, one query pair each (such as `min_size=1000000`)."),
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, description = "Resume after this sequence number (when no `from` is given)."),
    ),
    responses(
        (status = 200, description = "The stream: SSE (`text/event-stream`) or one JSON object a line (`application/x-ndjson`).",
            content((String = "text/event-stream"), (String = "application/x-ndjson"))),
        (status = 400, description = "A bad `from`, `Last-Event-ID` or parameter (`bad_request`, `invalid_param`).", body = ErrorBody),
        AuthErrors,
        (status = 404, description = "No such key.", body = ErrorBody),
        (status = 406, description = "The client accepts neither SSE nor NDJSON.", body = ErrorBody),
        (status = 409, description = "The named consumer is bound to another key or other params, or there are too many (`conflict`).", body = ErrorBody),
        (status = 502, description = "The key's plugin failed (`pre_consume_failed`, `plugin_fault`).", body = ErrorBody),
        (status = 503, description = "Shutting down (`shutting_down`), or a new named consumer could not be stored (`unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    ),
    extensions(("x-weir-role" = json!("query"))),
)]
pub(super) async fn stream_key(
    State(host): State<Arc<Host>>,
    caller: Caller,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
    q: Result<Query<Pairs>, QueryRejection>,
) -> Result<Response, AppError> {
    let who = caller.key;
    let key = path(key)?;
    let format = format_for(&headers)?;
    let mut from = None;
    let mut named = None;
    let mut params = Vec::new();
    for (name, value) in query(q)? {
        if name == "consumer" {
            named = Some(value);
        } else if name == "from" {
            from = Some(
                value
                    .parse::<StartAt>()
                    .map_err(|e| AppError::BadRequest(format!("param `from`: {e}")))?,
            );
        } else {
            params.push((name, value));
        }
    }
    let from = match from {
        Some(f) => f,
        None => match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
            Some(id) => StartAt::Seq(
                id.trim()
                    .parse::<u64>()
                    .map_err(|_| {
                        AppError::BadRequest(format!(
                            "header `Last-Event-ID`: `{id}` is not a sequence number"
                        ))
                    })?
                    .saturating_add(1),
            ),
            None => StartAt::Latest,
        },
    };
    let consumer = host
        .pipeline()
        .subscribe(SubscribeRequest {
            key,
            params,
            from,
            scope: who.datastore,
            consumer: named,
        })
        .await?;
    Ok(match format {
        Format::Sse => sse(consumer),
        Format::Ndjson => ndjson(consumer),
    })
}

fn deliveries(consumer: Consumer) -> impl futures_util::Stream<Item = Delivery> + Send {
    stream::unfold(
        consumer,
        |mut c| async move { c.recv().await.map(|d| (d, c)) },
    )
}

fn sse(consumer: Consumer) -> Response {
    use futures_util::StreamExt;
    let events = deliveries(consumer).map(|d| {
        Ok::<_, Infallible>(match d {
            Delivery::Envelope { seq, json } => SseEvent::default().id(seq.to_string()).data(json),
            Delivery::Notice(n) => {
                let kind = serde_json::to_value(&n)
                    .ok()
                    .and_then(|v| v.get("notice").and_then(Value::as_str).map(String::from))
                    .unwrap_or_else(|| "notice".into());
                SseEvent::default()
                    .event(kind)
                    .data(serde_json::to_string(&n).unwrap_or_default())
            }
        })
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Deliveries already waiting are written together: one chunk (and one
/// write) for many lines when the consumer is busy.
const COALESCE: usize = 256;

fn ndjson(consumer: Consumer) -> Response {
    use futures_util::StreamExt;
    let lines = deliveries(consumer).ready_chunks(COALESCE).map(|ds| {
        let mut buf = String::new();
        for d in ds {
            match d {
                Delivery::Envelope { json, .. } => buf.push_str(&json),
                Delivery::Notice(n) => buf.push_str(&serde_json::to_string(&n).unwrap_or_default()),
            }
            buf.push('\n');
        }
        Ok::<_, Infallible>(Bytes::from(buf))
    });
    let mut response = Body::from_stream(lines).into_response();
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The subscriptions.
///
/// Needs role `admin`. Subscriptions and their consumers with counters,
/// pre-consume and cleanup runs, quarantined keys, bus stats, events by
/// type.
#[utoipa::path(
    get,
    path = "/v1/subscriptions",
    tag = "events",
    responses(
        (status = 200, description = "`subscriptions`, `pre_consume_runs`, `cleanup_runs`, `quarantined`, `bus`, `events_by_type`.", body = Object),
        AuthErrors,
    ),
    extensions(("x-weir-role" = json!("admin"))),
)]
pub(super) async fn subscriptions(
    State(host): State<Arc<Host>>,
    caller: Caller,
) -> Result<Json<Value>, AppError> {
    let who = caller.key;
    let p = host.pipeline();
    let (pre_consumes, cleanups) = p.lifecycle_counts();
    if let Some(d) = &who.datastore {
        // A datastore's admin sees its own subscriptions only.
        let own = format!("{d}/");
        let subs: Vec<_> = p
            .subscriptions()
            .into_iter()
            .filter(|s| s.subscription_id.starts_with(&own))
            .collect();
        return Ok(Json(json!({
            "subscriptions": subs,
            "pre_consume_runs": pre_consumes,
            "cleanup_runs": cleanups,
            "quarantined": p.health().quarantined().into_iter().map(|(key, q)| json!({"key": key, "quarantine": q})).collect::<Vec<_>>(),
            "bus": p.bus().stats(),
            "events_by_type": {},
        })));
    }
    Ok(Json(json!({
        "subscriptions": p.subscriptions(),
        "pre_consume_runs": pre_consumes,
        "cleanup_runs": cleanups,
        "quarantined": p.health().quarantined().into_iter().map(|(key, q)| json!({"key": key, "quarantine": q})).collect::<Vec<_>>(),
        "bus": p.bus().stats(),
        "events_by_type": p.event_counts(),
    })))
}

/// Dead letters of the caller's scope held now.
fn held(host: &Host, caller: &Caller) -> usize {
    host.pipeline().dead_letters().count(&DeadLetterSelector {
        scope: caller.key.datastore.clone(),
        ..DeadLetterSelector::default()
    })
}

/// Reads `key`, `id` (repeatable) and `limit` from a query; the selection
/// stays within the caller's scope.
fn selector(
    caller: &Caller,
    pairs: Pairs,
) -> Result<(DeadLetterSelector, Option<usize>), AppError> {
    let mut sel = DeadLetterSelector {
        scope: caller.key.datastore.clone(),
        ..DeadLetterSelector::default()
    };
    let mut limit = None;
    for (name, value) in pairs {
        match name.as_str() {
            "key" => sel.key = Some(value),
            "id" => sel.ids.push(value.parse().map_err(|_| {
                AppError::BadRequest(format!("param `id`: `{value}` is not a dead-letter id"))
            })?),
            "limit" => {
                limit = Some(value.parse().map_err(|_| {
                    AppError::BadRequest(format!("param `limit`: `{value}` is not a count"))
                })?)
            }
            other => {
                return Err(AppError::BadRequest(format!(
                    "param `{other}`: unknown (known: key, id, limit)"
                )));
            }
        }
    }
    Ok((sel, limit))
}

/// The dead letters.
///
/// Needs role `admin`. Dead letters, oldest first, with the total held and
/// how many were evicted.
#[utoipa::path(
    get,
    path = "/v1/dlq",
    tag = "events",
    params(
        ("key" = Option<String>, Query, description = "Only this key's letters."),
        ("id" = Option<Vec<u64>>, Query, explode, description = "Only these letters (repeatable)."),
        ("limit" = Option<usize>, Query, description = "At most this many (default 100, at most 10000)."),
    ),
    responses(
        (status = 200, description = "`total`, `evicted` and `letters`.", body = Object),
        (status = 400, description = "A bad or unknown query parameter.", body = ErrorBody),
        AuthErrors,
    ),
    extensions(("x-weir-role" = json!("admin"))),
)]
pub(super) async fn dlq_list(
    State(host): State<Arc<Host>>,
    caller: Caller,
    q: Result<Query<Pairs>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let (sel, limit) = selector(&caller, query(q)?)?;
    let dlq = host.pipeline().dead_letters();
    Ok(Json(json!({
        "total": held(&host, &caller),
        "evicted": dlq.evicted(),
        "letters": dlq.list(&sel, limit.unwrap_or(100).min(10_000)),
    })))
}

/// Replay dead letters.
///
/// Needs role `admin`. Runs the selected letters again through the current
/// plugin; an empty body replays every letter.
#[utoipa::path(
    post,
    path = "/v1/dlq/replay",
    tag = "events",
    request_body(content = Option<DeadLetterSelector>, content_type = "application/json",
        description = "Which letters (both fields optional); an empty body selects all."),
    responses(
        (status = 200, description = "`results` per letter and the letters `remaining`.", body = Object),
        (status = 400, description = "A body that is not a selector.", body = ErrorBody),
        AuthErrors,
        (status = 413, description = "The body is larger than 4 MiB.", body = ErrorBody),
    ),
    extensions(("x-weir-role" = json!("admin"))),
)]
pub(super) async fn dlq_replay(
    State(host): State<Arc<Host>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let body = body_bytes(body)?;
    let mut sel: DeadLetterSelector = if body.iter().all(u8::is_ascii_whitespace) {
        DeadLetterSelector::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| AppError::BadRequest(format!("body: {e}")))?
    };
    sel.scope = caller.key.datastore.clone();
    let results = host.pipeline().replay(sel).await;
    Ok(Json(json!({
        "results": results,
        "remaining": held(&host, &caller),
    })))
}

/// Delete dead letters.
///
/// Needs role `admin`. Removes the selected letters (all without a
/// selection), the oldest `limit` of them when a limit is given.
#[utoipa::path(
    delete,
    path = "/v1/dlq",
    tag = "events",
    params(
        ("key" = Option<String>, Query, description = "Only this key's letters."),
        ("id" = Option<Vec<u64>>, Query, explode, description = "Only these letters (repeatable)."),
        ("limit" = Option<usize>, Query, description = "At most this many, oldest first (default: all selected)."),
    ),
    responses(
        (status = 200, description = "How many were `deleted`, and the letters `remaining`.", body = Object),
        (status = 400, description = "A bad or unknown query parameter.", body = ErrorBody),
        AuthErrors,
    ),
    extensions(("x-weir-role" = json!("admin"))),
)]
pub(super) async fn dlq_delete(
    State(host): State<Arc<Host>>,
    caller: Caller,
    q: Result<Query<Pairs>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let (sel, limit) = selector(&caller, query(q)?)?;
    let deleted = host
        .pipeline()
        .dead_letters()
        .take(&sel, limit.unwrap_or(usize::MAX))
        .len();
    // What remains of the caller's scope: another datastore's letters are
    // not even counted for it.
    Ok(Json(
        json!({ "deleted": deleted, "remaining": held(&host, &caller) }),
    ))
}
