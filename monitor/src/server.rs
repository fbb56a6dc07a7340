//! The console over HTTP: the JSON API under `/api`, and the pages (docs/console.md). Handlers
//! only gather a view model and hand it to a page or to JSON.

use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::actions::{Actions, Requested};
use crate::error::MonitorError;
use crate::model::{SagaFilter, Status};
use crate::pages;
use crate::time::parse_rfc3339;

/// The routes of the console, API and pages.
pub(crate) fn router(actions: Actions) -> Router {
    Router::new()
        .route("/api/sagas", get(api_sagas))
        .route("/api/sagas/{id}", get(api_saga))
        .route("/api/sagas/{id}/retry", post(api_retry))
        .route("/api/graph", get(api_graph))
        .route("/api/dead-letters", get(api_dead_letters))
        .route("/api/dead-letters/{id}/redrive", post(api_redrive))
        .route("/", get(list_page))
        .route("/sagas/{id}", get(saga_page))
        .route("/sagas/{id}/timeline.svg", get(timeline_svg))
        .route("/sagas/{id}/retry", post(retry_form))
        .route("/graph", get(graph_page))
        .route("/graph.svg", get(graph_svg))
        .route("/dead-letters", get(dead_letters_page))
        .route("/dead-letters/{id}/redrive", post(redrive_form))
        .layer(axum::middleware::from_fn(same_site_posts))
        .with_state(actions)
}

/// Refuses a POST that a page of another site sent (its `Origin` is not this console), so
/// that a page open in the same browser cannot redrive or retry through the console. A
/// client that sends no `Origin` (the `choreo` command, curl) is not a browser page.
async fn same_site_posts(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.method() == axum::http::Method::POST {
        let header = |name| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        if let Some(origin) = header(header::ORIGIN) {
            let origin_host = origin.split_once("://").map_or(origin, |(_, host)| host);
            if Some(origin_host) != header(header::HOST) {
                return ApiError(
                    StatusCode::FORBIDDEN,
                    format!("refused: a request sent by a page of {origin}, not of this console"),
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// The saga list's query string, as a form sends it (empty fields mean no filter).
#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    status: Option<String>,
    search: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

impl ListQuery {
    fn filter(self) -> Result<SagaFilter, ApiError> {
        let given = |value: Option<String>| value.filter(|value| !value.trim().is_empty());
        let status = given(self.status)
            .map(|status| status.parse::<Status>())
            .transpose()
            .map_err(|error| ApiError::bad_request(error.to_string()))?;
        // An instant that does not parse would filter nothing, silently.
        let instant = |name: &str, value: Option<String>| match value {
            Some(text) if parse_rfc3339(&text).is_none() => Err(ApiError::bad_request(format!(
                "`{name}` is not an RFC 3339 instant (such as 2026-12-06T14:00:00Z): `{text}`"
            ))),
            value => Ok(value),
        };
        Ok(SagaFilter {
            status,
            search: given(self.search),
            from: instant("from", given(self.from))?,
            to: instant("to", given(self.to))?,
            limit: self.limit,
        })
    }
}

/// A failed request: its HTTP status and a message, as JSON `{"error": ...}`.
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: String) -> Self {
        ApiError(StatusCode::BAD_REQUEST, message)
    }
}

/// A query string, a JSON body or a form the handler cannot read is a bad request, answered
/// as every other error is rather than as axum's plain text.
macro_rules! bad_request_from {
    ($($rejection:ty),*) => {$(
        impl From<$rejection> for ApiError {
            fn from(rejection: $rejection) -> Self {
                ApiError::bad_request(rejection.body_text())
            }
        }
    )*};
}
bad_request_from!(QueryRejection, JsonRejection, FormRejection);

impl From<MonitorError> for ApiError {
    fn from(error: MonitorError) -> Self {
        let status = match &error {
            MonitorError::NotFound(_) => StatusCode::NOT_FOUND,
            MonitorError::Refused(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// A failed page: the same, as a page.
struct PageError(ApiError);

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(error: E) -> Self {
        PageError(error.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let ApiError(status, message) = self.0;
        let title = status.canonical_reason().unwrap_or("Error");
        (status, Html(pages::message_page(title, &message, "/"))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn api_sagas(
    State(actions): State<Actions>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<crate::model::SagaList> {
    let Query(query) = query?;
    Ok(Json(actions.views.sagas(&query.filter()?).await?))
}

async fn api_saga(
    State(actions): State<Actions>,
    Path(id): Path<String>,
) -> ApiResult<crate::model::SagaDetail> {
    let saga = actions.views.saga(&id).await?;
    saga.map(Json)
        .ok_or_else(|| MonitorError::NotFound(format!("saga {id}")).into())
}

/// The service whose compensations to retry.
#[derive(Debug, Deserialize)]
struct RetryForm {
    service: String,
}

async fn api_retry(
    State(actions): State<Actions>,
    Path(id): Path<String>,
    form: Result<Json<RetryForm>, JsonRejection>,
) -> Result<(StatusCode, Json<Requested>), ApiError> {
    let Json(form) = form?;
    let requested = actions.retry(&id, &form.service).await?;
    Ok((StatusCode::ACCEPTED, Json(requested)))
}

async fn api_graph(State(actions): State<Actions>) -> ApiResult<crate::model::Graph> {
    Ok(Json(actions.views.graph().await?))
}

async fn api_dead_letters(
    State(actions): State<Actions>,
) -> ApiResult<Vec<crate::model::DeadLetter>> {
    Ok(Json(actions.views.dead_letters().await?))
}

async fn api_redrive(
    State(actions): State<Actions>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Requested>), ApiError> {
    let requested = actions.redrive(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(requested)))
}

async fn list_page(
    State(actions): State<Actions>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Html<String>, PageError> {
    let Query(query) = query?;
    let filter = query.filter()?;
    let list = actions.views.sagas(&filter).await?;
    Ok(Html(pages::saga_list(&list, &filter)))
}

async fn saga_page(
    State(actions): State<Actions>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let saga = actions.views.saga(&id).await?;
    let saga = saga.ok_or_else(|| MonitorError::NotFound(format!("saga {id}")))?;
    Ok(Html(pages::saga_page(&saga)))
}

async fn timeline_svg(
    State(actions): State<Actions>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let saga = actions.views.saga(&id).await?;
    let saga = saga.ok_or_else(|| MonitorError::NotFound(format!("saga {id}")))?;
    Ok(svg(pages::timeline_svg(&saga)))
}

async fn retry_form(
    State(actions): State<Actions>,
    Path(id): Path<String>,
    form: Result<Form<RetryForm>, FormRejection>,
) -> Result<(StatusCode, Html<String>), PageError> {
    let Form(form) = form?;
    let back = format!("/sagas/{id}");
    match actions.retry(&id, &form.service).await {
        Ok(_) => Ok((
            StatusCode::OK,
            Html(pages::message_page(
                "Retry requested",
                &format!(
                    "{} will run its failed compensations of saga {id} again.",
                    form.service
                ),
                &back,
            )),
        )),
        Err(MonitorError::Refused(reason)) => Ok(refused_page(&reason, &back)),
        Err(error) => Err(error.into()),
    }
}

async fn graph_page(State(actions): State<Actions>) -> Result<Html<String>, PageError> {
    Ok(Html(pages::graph_page(&actions.views.graph().await?)))
}

async fn graph_svg(State(actions): State<Actions>) -> Result<Response, PageError> {
    Ok(svg(pages::graph_svg(&actions.views.graph().await?)))
}

async fn dead_letters_page(State(actions): State<Actions>) -> Result<Html<String>, PageError> {
    Ok(Html(pages::dead_letters_page(
        &actions.views.dead_letters().await?,
    )))
}

async fn redrive_form(
    State(actions): State<Actions>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Html<String>), PageError> {
    match actions.redrive(&id).await {
        Ok(requested) => Ok((
            StatusCode::OK,
            Html(pages::message_page(
                "Redriven",
                &format!("The event goes to {} again.", requested.services.join(", ")),
                &format!("/sagas/{}", requested.saga_id),
            )),
        )),
        Err(MonitorError::Refused(reason)) => Ok(refused_page(&reason, "/dead-letters")),
        Err(error) => Err(error.into()),
    }
}

/// A refused request from a page's form: the reason, with the status the API answers.
fn refused_page(reason: &str, back: &str) -> (StatusCode, Html<String>) {
    (
        StatusCode::CONFLICT,
        Html(pages::message_page("Refused", reason, back)),
    )
}

fn svg(body: String) -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response()
}
