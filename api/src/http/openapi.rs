//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' (for a
//! command route, its plan's; see `routes::commands`) `#[utoipa::path]` attributes and the wire types of `ledger_wire`, served at
//! `GET /openapi.json`, and Swagger UI at `GET /docs` with its assets compiled into the
//! binary (no network at build or view time). Both need no token.
//!
//! What middleware and extractors do to every route of a kind (bearer auth, the rate
//! limit, `Idempotency-Key`, correlation ids, problem documents, `X-Ledger-Position`) is
//! added here once, by path and method, so each handler's attribute lists only what is
//! particular to it. Depends on the routes' attributes only, never on their logic.

use crate::routes::{
    accounts, admin, audit, bulk, console, deposits, events, health, holds, ledgers, periods, reconciliations,
    subjects, transactions, transfers, webhooks, withdrawals,
};
use axum::Router;
use ledger_wire as schemas;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, KnownFormat, OpenApi as Document, Ref, RefOr, Required, SchemaFormat};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// Where Swagger UI is served.
pub const DOCS_PATH: &str = "/docs";

/// The name of the bearer security scheme.
const BEARER: &str = "bearer";
const PROBLEM_JSON: &str = "application/problem+json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ledger HTTP API",
        description = "An event-sourced ledger: accounts, deposits, transfers, withdrawals, \
            their audit trail and operations (contract: API.md v1).\n\n\
            Everything under `/v1` needs `Authorization: Bearer <token>`; `/health/*`, `/metrics`, \
            `/openapi.json` and `/docs` need no token. Every POST under `/v1` needs an \
            `Idempotency-Key`. Amounts are integers of minor units (cents). Errors are RFC 9457 \
            problem documents whose `code` is stable.\n\n\
            Ledgers (API.md v1.2): every route under `/v1` except `/v1/admin/ledgers…` and \
            `/v1/admin/tokens` is also served at `/v1/ledgers/{ledger}/…` (the same path after the \
            prefix) for the ledger named `{ledger}`; the unprefixed path addresses the ledger \
            `default`. An unknown ledger is 404 `ledger_not_found`; a token whose ledger list does \
            not name it is 403 `forbidden`."
    ),
    paths(
        accounts::plan_open,
        accounts::by_owner,
        accounts::read,
        accounts::plan_close,
        accounts::events,
        accounts::transactions,
        accounts::balance,
        deposits::plan,
        transfers::plan_transfer,
        transfers::read,
        transfers::plan_reverse,
        transactions::plan_create,
        transactions::read,
        transactions::plan_reverse,
        transactions::search,
        holds::plan_place,
        holds::read,
        holds::plan_capture,
        holds::plan_void,
        bulk::bulk,
        withdrawals::plan,
        withdrawals::read,
        events::events,
        events::system_accounts,
        audit::audit,
        audit::verify,
        audit::tree_head,
        audit::inclusion,
        audit::consistency,
        audit::keys,
        admin::projections,
        admin::rebuild,
        admin::breakers,
        admin::dead_letters,
        admin::redrive,
        admin::discard,
        admin::create_token,
        subjects::erase,
        periods::close,
        periods::list,
        periods::one,
        periods::balances,
        ledgers::list,
        ledgers::show,
        ledgers::create,
        console::index,
        console::asset,
        webhooks::create,
        webhooks::list,
        webhooks::remove,
        reconciliations::list,
        reconciliations::start,
        reconciliations::read,
        health::live,
        health::ready,
        metrics,
        openapi_json,
        docs,
    ),
    components(schemas(schemas::Problem, schemas::ErrorCode, schemas::ProjectionName)),
    modifiers(&CrossCutting),
    tags(
        (name = "accounts", description = "Open, close and read accounts; statements, history, replay."),
        (name = "deposits", description = "Money entering the ledger."),
        (name = "transfers", description = "Movements between accounts, and their reversal."),
        (name = "bulk", description = "Many commands in one request, atomically or not."),
        (name = "holds", description = "Two-phase holds: reserve now, capture or void later, with expiry."),
        (name = "transactions", description = "Many postings recorded as one event; every transfer is also a \
            one-posting transaction."),
        (name = "withdrawals", description = "Money leaving the ledger through the payment provider."),
        (name = "log", description = "The global event log and the system accounts."),
        (name = "audit", description = "Who did what, and the tamper-evident hash chain."),
        (name = "operations", description = "Projections, circuit breakers, dead letters, reconciliation, tokens (operator or admin)."),
        (name = "webhooks", description = "Committed events pushed to clients' endpoints, signed (operator or admin)."),
        (name = "ledgers", description = "Independent books in one deployment, placed on shards (admin, operator)."),
        (name = "infrastructure", description = "Health, metrics and these docs (no token)."),
    )
)]
pub struct ApiDoc;

/// The document, as served.
pub fn document() -> Document {
    ApiDoc::openapi()
}

/// `GET /openapi.json` and Swagger UI under `GET /docs` (which redirects to `/docs/`).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    // The validator badge would send the document to validator.swagger.io: keep the page offline.
    let config = utoipa_swagger_ui::Config::new([OPENAPI_PATH]).validator_url("none");
    SwaggerUi::new(DOCS_PATH).url(OPENAPI_PATH, document()).config(config).into()
}

/// Prometheus metrics. Documentation only: the route is registered in [`crate::app`].
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "infrastructure",
    summary = "Prometheus metrics",
    description = "Request, command, projection-lag and dependency metrics.",
    responses((status = 200, description = "Prometheus text exposition format.", body = String,
        content_type = "text/plain; version=0.0.4"))
)]
#[allow(dead_code, reason = "documents a route whose handler lives elsewhere")]
fn metrics() {}

/// This document. Documentation only: served by [`router`].
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "infrastructure",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object))
)]
#[allow(dead_code, reason = "documents a route served by utoipa-swagger-ui")]
fn openapi_json() {}

/// Human-readable docs (Swagger UI). Documentation only: served by [`router`].
#[utoipa::path(
    get,
    path = "/docs",
    operation_id = "docs",
    tag = "infrastructure",
    summary = "Human-readable docs (Swagger UI)",
    responses((status = 303, description = "Redirects to `/docs/`, the Swagger UI page; its assets are served \
        from under `/docs/` out of the binary.", headers(("Location" = String, description = "`/docs/`"))))
)]
#[allow(dead_code, reason = "documents a route served by utoipa-swagger-ui")]
fn docs() {}

/// Adds what middleware and extractors apply to whole groups of routes.
struct CrossCutting;

impl Modify for CrossCutting {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "`LEDGER_ADMIN_TOKEN`, or a token from `POST /v1/admin/tokens`. Missing or unknown: 401 \
                 `unauthorized`; the role does not allow the route: 403 `forbidden`.",
            ))
            .build();
        components.add_security_scheme(BEARER, SecurityScheme::Http(bearer));
        components.parameters.insert("IdempotencyKey".into(), RefOr::T(idempotency_key()));
        components.parameters.insert("CorrelationId".into(), RefOr::T(correlation_id_parameter()));
        for (name, header) in headers() {
            components.headers.insert(name.into(), RefOr::T(header));
        }
        for (path, item) in doc.paths.paths.iter_mut() {
            let v1 = path.starts_with("/v1/");
            // Webhook routes answer no position, and their DELETE takes no key (API.md).
            let positioned = !path.starts_with("/v1/admin/webhooks");
            // Reads are GETs; POSTs under /v1 are commands; a DELETE is neither.
            let operations = [
                (&mut item.get, Some(false)),
                (&mut item.post, Some(true)),
                (&mut item.put, Some(true)),
                (&mut item.patch, Some(true)),
                (&mut item.delete, None),
            ];
            for (operation, write) in operations {
                let Some(operation) = operation.as_mut() else { continue };
                optional_body(operation);
                if v1 {
                    authenticated(operation);
                    match write {
                        Some(true) => command(operation),
                        Some(false) if positioned => read(operation),
                        _ => {}
                    }
                }
                every_route(operation);
                problem_bodies(operation);
            }
        }
    }
}

fn header_ref(name: &str) -> RefOr<Header> {
    RefOr::Ref(Ref::new(format!("#/components/headers/{name}")))
}

fn parameter_ref(name: &str) -> RefOr<Parameter> {
    RefOr::Ref(Ref::new(format!("#/components/parameters/{name}")))
}

fn string_schema(pattern: Option<&str>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(255))
        .pattern(pattern.map(str::to_owned))
}

fn idempotency_key() -> Parameter {
    ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::True)
        .description(Some(
            "1–255 printable ASCII characters, scoped to the token. The same key with the same method, path \
             and body returns the stored response again (`Idempotent-Replayed: true`), so nothing runs \
             twice; with a different request: 422 `idempotency_key_reused`. Missing: 400 \
             `idempotency_key_missing`; malformed: 400 `validation_error`.",
        ))
        .schema(Some(string_schema(Some("^[ -~]+$"))))
        .example(Some(serde_json::json!("3f0c2a9e-6d55-4c8e-9b61-5d2f1f7c9a10")))
        .build()
}

fn correlation_id_parameter() -> Parameter {
    ParameterBuilder::new()
        .name("X-Correlation-Id")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Ties this request to others; recorded in the metadata of the events it causes and echoed on \
             the response. 1–255 printable ASCII characters; generated when absent or otherwise.",
        ))
        .schema(Some(string_schema(Some("^[ -~]+$"))))
        .build()
}

fn headers() -> [(&'static str, Header); 5] {
    let integer =
        || ObjectBuilder::new().schema_type(Type::Integer).format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)));
    let string = || ObjectBuilder::new().schema_type(Type::String);
    let header = |schema: ObjectBuilder, description: &str| {
        HeaderBuilder::new().schema(Some(schema)).description(Some(description)).build()
    };
    [
        ("XLedgerPosition", header(integer(), "The log position the returned data reflects.")),
        (
            "IdempotentReplayed",
            header(
                string().enum_values(Some(["true"])),
                "`true` when this is the stored response of an earlier request with the same Idempotency-Key.",
            ),
        ),
        ("RetryAfter", header(integer(), "Seconds to wait before retrying.")),
        ("XCorrelationId", header(string(), "The request's correlation id (sent or generated).")),
        ("XRequestId", header(string(), "This request's id (in the logs and in event metadata).")),
    ]
}

/// Correlation ids in and out, and a 500 for a handler that panicked.
fn every_route(operation: &mut Operation) {
    operation.parameters.get_or_insert_with(Vec::new).push(parameter_ref("CorrelationId"));
    add_response(operation, 500, "`internal`: an unexpected failure (details are only in the log).");
    for response in responses(operation) {
        response.headers.insert("X-Correlation-Id".into(), header_ref("XCorrelationId"));
        response.headers.insert("X-Request-Id".into(), header_ref("XRequestId"));
    }
}

/// The bearer token, the role table and the per-token rate limit (`crate::http::auth`).
fn authenticated(operation: &mut Operation) {
    operation.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    add_response(operation, 401, "`unauthorized`: the bearer token is missing or unknown.");
    add_response(operation, 403, "`forbidden`: this token's role, or its ledger list, does not allow this request.");
    add_response(operation, 404, "`ledger_not_found`: under `/v1/ledgers/{ledger}/…`, no ledger has that name.");
    add_response(operation, 429, "`rate_limited`: this token exceeded its rate limit; see `Retry-After`.");
    add_response(operation, 503, "`unavailable`: a dependency (Postgres) is unavailable; retry later.");
}

/// A command: the Idempotency-Key rules and the bounded JSON body (`crate::http::command`).
fn command(operation: &mut Operation) {
    operation.parameters.get_or_insert_with(Vec::new).insert(0, parameter_ref("IdempotencyKey"));
    add_response(
        operation,
        400,
        "`idempotency_key_missing`: no Idempotency-Key; `validation_error`: the key is malformed or the \
         body is not JSON.",
    );
    add_response(operation, 413, "`payload_too_large`: the body exceeds the server's limit.");
    add_response(operation, 422, "`idempotency_key_reused`: the key was used with a different request.");
    add_response(
        operation,
        409,
        "`idempotency_key_in_flight`: a request with this key is still executing; `version_conflict`: \
         concurrent commands kept conflicting. Retry after `Retry-After`.",
    );
    for (status, response) in operation.responses.responses.iter_mut() {
        if let (RefOr::T(response), true) = (response, replayable(status)) {
            response.headers.insert("Idempotent-Replayed".into(), header_ref("IdempotentReplayed"));
        }
    }
}

/// Stored (so replayed) are the command's own answers: success and business rejections.
fn replayable(status: &str) -> bool {
    status.starts_with('2') || ["404", "409", "422"].contains(&status)
}

/// A read: every 200 says which log position it reflects (`crate::read::views::read`).
fn read(operation: &mut Operation) {
    if let Some(RefOr::T(ok)) = operation.responses.responses.get_mut("200") {
        ok.headers.insert("X-Ledger-Position".into(), header_ref("XLedgerPosition"));
    }
}

/// Every error without a body of its own is a problem document (`crate::http::error`).
fn problem_bodies(operation: &mut Operation) {
    let problem = Content::new(Some(Ref::from_schema_name("Problem")));
    for (status, response) in operation.responses.responses.iter_mut() {
        let RefOr::T(response) = response else { continue };
        let error = status.starts_with('4') || status.starts_with('5');
        if error && response.content.is_empty() {
            response.content.insert(PROBLEM_JSON.into(), RefOr::T(problem.clone()));
        }
        let is_problem = response.content.contains_key(PROBLEM_JSON);
        if is_problem && ["409", "429", "503"].contains(&status.as_str()) {
            response.headers.insert("Retry-After".into(), header_ref("RetryAfter"));
        }
    }
}

/// An optional body (`Option<T>` in an attribute) may be left out, but a JSON `null` is
/// no valid body: utoipa's nullable `oneOf: [T, null]` becomes plain `T`.
fn optional_body(operation: &mut Operation) {
    let Some(RefOr::T(body)) = operation.request_body.as_mut() else { return };
    if body.required == Some(Required::True) {
        return;
    }
    let is_null =
        |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
    for content in body.content.values_mut() {
        let RefOr::T(content) = content else { continue };
        if let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema
            && let [only] = one_of.items.iter().filter(|s| !is_null(s)).collect::<Vec<_>>().as_slice()
        {
            content.schema = Some((*only).clone());
        }
    }
}

/// Adds a response, or, when the route documents that status already, the codes it
/// gets from the shared layers to its description.
fn add_response(operation: &mut Operation, status: u16, description: &str) {
    let key = status.to_string();
    match operation.responses.responses.get_mut(&key) {
        Some(RefOr::T(existing)) if !existing.description.contains(description) => {
            // A route's own 409 lists its conflicts; the shared in-flight text applies only
            // to commands that run through `crate::http::command::Planned::run`, which say so themselves.
            if status != 409 {
                existing.description = format!("{}\n\n{description}", existing.description);
            }
        }
        Some(_) => {}
        None => {
            let response: Response = ResponseBuilder::new().description(description).build();
            operation.responses.responses.insert(key, RefOr::T(response));
        }
    }
}

fn responses(operation: &mut Operation) -> impl Iterator<Item = &mut Response> {
    operation.responses.responses.values_mut().filter_map(|r| match r {
        RefOr::T(response) => Some(response),
        RefOr::Ref(_) => None,
    })
}
