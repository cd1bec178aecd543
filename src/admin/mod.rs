//! The admin endpoint (feature `admin`): a JSON API and one web page for
//! operators, as an axum [`Router`](axum::Router) that the application
//! mounts where it binds.
//!
//! ```no_run
//! # async fn demo(engine: durable::Engine) -> std::io::Result<()> {
//! use durable::admin::{AdminOptions, router};
//!
//! let admin = router(engine, AdminOptions::new().token(std::env::var("DURABLE_ADMIN_TOKEN").ok()));
//! let app = axum::Router::new().nest("/admin", admin);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7070").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! Read-only unless a token is set: every `GET` is open to whoever can
//! reach the address; actions (`POST`) need `Authorization: Bearer <token>`
//! and are refused with 403 when no token is set, 401 when it is missing or
//! wrong. Bind it to a private address.
//!
//! | route | does |
//! | --- | --- |
//! | `GET /` | the web page (one self-contained HTML document, no external assets) |
//! | `GET /instances?status=&workflow=&queue=&limit=&after=&since_ms=&until_ms=` | one page of instances, newest first; `status` repeatable or comma-separated |
//! | `GET /instances/{id}` | one instance: status, where it stands, input, output, steps with values |
//! | `GET /instances/{id}/history` | the same document: transitions, every step occurrence, events |
//! | `GET /stats` | counts by status and by workflow |
//! | `GET /schedules` | every schedule: name, workflow, cron, missed-tick policy, paused, last and next tick ([`Engine::schedules`](crate::Engine::schedules)) |
//! | `GET /queues` | every queue: pending and running counts, limits ([`Engine::queues`](crate::Engine::queues)) |
//! | `GET /check` | the deploy gate of the running build ([`Engine::compatibility`](crate::Engine::compatibility)) |
//! | `GET /info` | whether actions are enabled, and the API's actions |
//! | `POST /instances/{id}/cancel` | cancel |
//! | `POST /instances/{id}/resume` | resume a blocked, needs-attention or incompatible instance |
//! | `POST /instances/{id}/events/{name}` | send an event; the body is the JSON payload, checked against the wait's type |
//! | `POST /instances/{id}/retry` | run a failed, blocked or needs-attention instance again from its failed step ([`Engine::retry`](crate::Engine::retry)) |
//! | `POST /instances/{id}/fork` | fork from a step into a new instance ([`Engine::fork`](crate::Engine::fork)): `from_step` (required) and `new_id` (optional; else the first free `{id}-fork-{n}`); answers `{"new_id": ..}` |
//! | `POST /instances/{id}/pause`, `/unpause` | no new step starts until unpaused ([`Engine::pause`](crate::Engine::pause)) |
//! | `POST /purge` | delete instances finished before `finished_before_ms` (milliseconds since the Unix epoch) or more than `older_than_ms` before the server's clock ([`Engine::purge`](crate::Engine::purge)); answers `{"purged": n}` |
//!
//! The parameters of `fork` and `purge` come from a JSON object in the body
//! (`{"from_step": "charge", "new_id": "order-42-again"}`) or from the
//! query string (`?from_step=charge`); the body wins.
//!
//! Errors are `{"error": {"kind": .., "message": ..}}` with the status
//! code: 400 a wrong call, 401/403 refused, 404 no such instance (or no
//! such step to fork from), 409 the instance's state forbids it (`finished`,
//! `not-retryable`, `id-conflict`, ..), 501 the store's backend does not
//! support the action (`not-supported`; both backends support every action
//! today), 500 the store failed.

mod actions;
mod api;
mod page;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};

use crate::Engine;

pub(crate) use api::{ApiRequest, check_json, handle, percent_encode};

/// Settings of the admin endpoint.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct AdminOptions {
    /// The bearer token that allows actions; `None` (the default) makes the
    /// endpoint read-only.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminOptions")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl AdminOptions {
    /// Read-only options.
    pub fn new() -> AdminOptions {
        AdminOptions::default()
    }

    /// Allows actions to requests bearing `token` (`None`, or an empty
    /// token, keeps the endpoint read-only).
    pub fn token(mut self, token: impl Into<Option<String>>) -> Self {
        self.token = token.into().filter(|t| !t.is_empty());
        self
    }
}

struct Admin {
    engine: Engine,
    options: AdminOptions,
}

/// The admin endpoint over `engine`: mount it with
/// [`Router::nest`](axum::Router::nest) (or serve it alone).
pub fn router(engine: Engine, options: AdminOptions) -> axum::Router {
    let state = Arc::new(Admin { engine, options });
    axum::Router::new()
        .route("/", axum::routing::get(page_handler))
        .fallback(api_handler)
        .with_state(state)
}

async fn page_handler() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(page::PAGE))
}

async fn api_handler(
    State(admin): State<Arc<Admin>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let request = ApiRequest {
        post: method == Method::POST,
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        authorization,
        body: &body,
    };
    if method != Method::GET && method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "GET or POST").into_response();
    }
    // The page also at the mount point with a trailing slash (`/admin/`).
    if method == Method::GET && uri.path().trim_matches('/').is_empty() {
        return page_handler().await.into_response();
    }
    let (status, value) = handle(&admin.engine, &admin.options, request).await;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(value)).into_response()
}
