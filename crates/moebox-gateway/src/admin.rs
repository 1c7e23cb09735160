//! The admin API under `/admin/` (admin scope): keys. `POST /admin/keys` creates a key and
//! answers its secret once; `GET /admin/keys` lists keys without secrets; `DELETE
//! /admin/keys/{id}` revokes one (the next request with it is refused). The same operations as
//! `moebox keys`, for tools that manage keys remotely.

use hyper::{Method, StatusCode};
use moebox_ledger::{KeyRecord, Ledger, LedgerError, NewKey, Revocation, Scope, UnixSeconds};
use serde::{Deserialize, Serialize};

use crate::{error::ApiError, openai::deserialize};

/// `POST /admin/keys`. Unknown fields are refused: a misspelt limit must not create a key
/// without it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    #[serde(default)]
    pub monthly_token_budget: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct CreatedKeyBody<'a> {
    /// The secret, shown this once.
    pub key: &'a str,
    #[serde(flatten)]
    pub record: &'a KeyRecord,
}

#[derive(Debug, Serialize)]
pub struct KeyList<'a> {
    pub object: &'static str,
    pub data: &'a [KeyRecord],
}

#[derive(Debug, Serialize)]
pub struct Revoked {
    pub id: i64,
    pub revoked: bool,
    /// When it was revoked, if it already was before this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub already_revoked_at: Option<UnixSeconds>,
}

/// What an admin-API call answers: a status and a JSON value.
pub type AdminReply = (StatusCode, serde_json::Value);

/// Answers `method` on `path` (under `/admin/keys`); `None` when the path is not a key route.
pub fn keys(
    ledger: &Ledger,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Option<Result<AdminReply, ApiError>> {
    let not_allowed = |allowed: &'static str| ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: path.to_owned(),
        allowed,
    };
    if path == "/admin/keys" {
        return Some(match *method {
            Method::GET => list(ledger),
            Method::POST => create(ledger, body),
            _ => Err(not_allowed("GET, POST")),
        });
    }
    let id = path.strip_prefix("/admin/keys/")?;
    Some(match *method {
        Method::DELETE => match id.parse::<i64>() {
            Ok(id) => revoke(ledger, id),
            Err(_) => Err(ApiError::InvalidValue {
                param: "id".into(),
                message: format!("key ids are integers, got {id:?}"),
            }),
        },
        _ => Err(not_allowed("DELETE")),
    })
}

fn list(ledger: &Ledger) -> Result<AdminReply, ApiError> {
    let keys = ledger.list_keys().map_err(internal)?;
    Ok((
        StatusCode::OK,
        to_value(&KeyList {
            object: "list",
            data: &keys,
        }),
    ))
}

fn create(ledger: &Ledger, body: &[u8]) -> Result<AdminReply, ApiError> {
    let request: CreateKey = deserialize(body)?;
    let mut new = NewKey::new(
        request.name,
        if request.admin {
            Scope::Admin
        } else {
            Scope::User
        },
    );
    if let Some(team) = request.team {
        new.team = team;
    }
    new.requests_per_minute = request.requests_per_minute;
    new.tokens_per_minute = request.tokens_per_minute;
    new.monthly_token_budget = request.monthly_token_budget;
    let created = ledger
        .create_key(&new, UnixSeconds::now())
        .map_err(|error| match error {
            LedgerError::InvalidField { field, message } => ApiError::InvalidValue {
                param: field.to_owned(),
                message: format!("`{field}` {message}"),
            },
            other => internal(other),
        })?;
    tracing::info!(
        target: "moebox_gateway::audit",
        key_id = created.record.id,
        team = %created.record.team,
        scope = created.record.scope.as_str(),
        "key created through the admin API"
    );
    Ok((
        StatusCode::CREATED,
        to_value(&CreatedKeyBody {
            key: created.key.expose(),
            record: &created.record,
        }),
    ))
}

fn revoke(ledger: &Ledger, id: i64) -> Result<AdminReply, ApiError> {
    match ledger.revoke_key(id, UnixSeconds::now()) {
        Ok(revocation) => {
            tracing::info!(target: "moebox_gateway::audit", key_id = id, "key revoked through the admin API");
            let already_revoked_at = match revocation {
                Revocation::Revoked => None,
                Revocation::AlreadyRevoked(at) => Some(at),
            };
            Ok((
                StatusCode::OK,
                to_value(&Revoked {
                    id,
                    revoked: true,
                    already_revoked_at,
                }),
            ))
        }
        Err(LedgerError::KeyNotFound(id)) => Err(ApiError::KeyNotFound(id)),
        Err(other) => Err(internal(other)),
    }
}

fn internal(error: LedgerError) -> ApiError {
    tracing::error!(%error, "admin API: ledger operation failed");
    ApiError::Internal
}

fn to_value<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}
