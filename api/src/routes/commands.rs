//! The command routes: one table, from which the router serves each route and
//! `POST /v1/bulk` runs each item. A route's entry is its path and its plan (the
//! route's own code, turning a request body into the command to run); one handler
//! runs every plan, once per idempotency key, through [`Planned::run`].

use crate::http::command::{CommandBody, Planned};
use crate::http::context::{Principal, RequestContext};
use crate::http::error::ApiError;
use crate::http::extract::Segment;
use crate::routes::{accounts, deposits, holds, transactions, transfers, withdrawals};
use crate::run::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use serde_json::Value;

/// A route's plan: the request body, with the route's `{id}` segment (empty on routes
/// without one), made into the command to run and how its outcome is answered.
pub type Plan = fn(&AppState, &str, &Value) -> Result<Planned, ApiError>;

/// One command route: `POST {path}`, where `{id}` stands for one path segment.
pub struct CommandRoute {
    pub path: &'static str,
    pub plan: Plan,
}

/// Every command route. Each plan carries the route's OpenAPI description.
pub const ROUTES: [CommandRoute; 11] = [
    CommandRoute { path: "/v1/accounts", plan: |_, _, json| accounts::plan_open(json) },
    CommandRoute { path: "/v1/accounts/{id}/close", plan: |_, id, json| accounts::plan_close(id, json) },
    CommandRoute { path: "/v1/deposits", plan: |state, _, json| deposits::plan(state, json) },
    CommandRoute { path: "/v1/transfers", plan: |state, _, json| transfers::plan_transfer(state, json) },
    CommandRoute { path: "/v1/transfers/{id}/reverse", plan: |_, id, json| transfers::plan_reverse(id, json) },
    CommandRoute { path: "/v1/withdrawals", plan: |_, _, json| withdrawals::plan(json) },
    CommandRoute { path: "/v1/transactions", plan: |state, _, json| transactions::plan_create(state, json) },
    CommandRoute { path: "/v1/transactions/{id}/reverse", plan: |_, id, json| transactions::plan_reverse(id, json) },
    CommandRoute { path: "/v1/holds", plan: |state, _, json| holds::plan_place(state, json) },
    CommandRoute { path: "/v1/holds/{id}/capture", plan: |state, id, json| holds::plan_capture(state, id, json) },
    CommandRoute { path: "/v1/holds/{id}/void", plan: |_, id, json| holds::plan_void(id, json) },
];

/// The command route a path names, and its `{id}` segment ("" on a route without one).
pub fn matching(path: &str) -> Option<(&'static CommandRoute, &str)> {
    ROUTES.iter().find_map(|route| {
        let (mut pattern, mut given) = (route.path.split('/'), path.split('/'));
        let mut id = "";
        loop {
            match (pattern.next(), given.next()) {
                (None, None) => return Some((route, id)),
                (Some("{id}"), Some(segment)) if !segment.is_empty() => id = segment,
                (Some(p), Some(segment)) if p == segment => {}
                _ => return None,
            }
        }
    })
}

/// Serves every command route.
pub fn router() -> Router<AppState> {
    ROUTES.iter().fold(Router::new(), |router, route| {
        let plan = route.plan;
        if route.path.contains("{id}") {
            router.route(
                route.path,
                post(
                    move |State(state): State<AppState>,
                          principal: Principal,
                          context: RequestContext,
                          Segment(id): Segment,
                          body: CommandBody| async move {
                        run(plan, &state, &principal, &context, &id, body).await
                    },
                ),
            )
        } else {
            router.route(
                route.path,
                post(
                    move |State(state): State<AppState>,
                          principal: Principal,
                          context: RequestContext,
                          body: CommandBody| async move {
                        run(plan, &state, &principal, &context, "", body).await
                    },
                ),
            )
        }
    })
}

async fn run(
    plan: Plan,
    state: &AppState,
    principal: &Principal,
    context: &RequestContext,
    id: &str,
    body: CommandBody,
) -> Result<Response, ApiError> {
    plan(state, id, &body.json)?.sealed(state).await?.run(state, principal, context, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_its_route_and_its_id() {
        let (route, id) = matching("/v1/holds/h-1/capture").expect("a command route");
        assert_eq!((route.path, id), ("/v1/holds/{id}/capture", "h-1"));
        assert_eq!(matching("/v1/transfers").map(|(r, id)| (r.path, id)), Some(("/v1/transfers", "")));
        for not_a_command in ["/v1/holds//capture", "/v1/holds/h-1", "/v1/transfers/", "v1/transfers", "/v1/bulk", ""] {
            assert!(matching(not_a_command).is_none(), "{not_a_command}");
        }
    }

    #[test]
    fn every_route_has_its_own_path() {
        let paths: std::collections::HashSet<_> = ROUTES.iter().map(|r| r.path).collect();
        assert_eq!(paths.len(), ROUTES.len());
    }
}
