//! Bearer JWT (HS256) authentication, roles and store scopes.

use crate::problem::Problem;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::future::{Ready, ready};
use std::sync::Arc;

/// Who a caller is, as their token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A shopper: own orders and devices only.
    Customer,
    /// Store staff: the stores listed in the token.
    Staff,
    /// Back office: everything.
    Admin,
    /// Another service.
    Service,
}

impl Role {
    /// The role as tokens spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Staff => "staff",
            Self::Admin => "admin",
            Self::Service => "service",
        }
    }
}

/// The claims of our tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User or service id.
    pub sub: String,
    /// The caller's role.
    pub role: Role,
    /// For staff: the stores they act on.
    #[serde(default)]
    pub stores: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
}

/// Verifies tokens; shared by every handler through app data.
#[derive(Clone)]
pub struct Authenticator {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
}

impl Authenticator {
    /// Verifies HS256 tokens signed with `secret`; fails on an empty secret.
    pub fn new(secret: &str) -> Result<Self, jsonwebtoken::errors::Error> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            key: Arc::new(DecodingKey::from_secret(secret.as_bytes())?),
            validation: Arc::new(validation),
        })
    }

    /// The caller behind a raw token.
    pub fn verify(&self, token: &str) -> Result<Caller, Problem> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Problem::unauthorized("the token has expired")
                }
                _ => Problem::unauthorized("the token is invalid"),
            },
        )?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(Problem::unauthorized("the token has no usable subject"));
        }
        Ok(Caller {
            id: claims.sub,
            role: claims.role,
            stores: claims.stores,
        })
    }
}

/// Signs a token (development tools, tests, service-to-service).
pub fn mint(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes())?,
    )
}

/// Signs a token for `sub` with `role`, valid for `ttl_secs`.
pub fn mint_for(
    secret: &str,
    sub: &str,
    role: Role,
    stores: &[&str],
    ttl_secs: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    mint(
        secret,
        &Claims {
            sub: sub.to_owned(),
            role,
            stores: stores.iter().map(|s| (*s).to_owned()).collect(),
            exp: chrono::Utc::now().timestamp() + ttl_secs,
        },
    )
}

/// The authenticated caller of a request; extracting it fails with 401 without a valid token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token subject: the user's or service's id.
    pub id: String,
    /// Role.
    pub role: Role,
    /// Stores a staff member acts on.
    pub stores: Vec<String>,
}

impl Caller {
    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), Problem> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "the {:?} role may not do this",
                self.role
            )))
        }
    }

    /// Whether the caller may act on `store_id` as store personnel (staff of it, admin, service).
    pub fn acts_for_store(&self, store_id: &str) -> bool {
        match self.role {
            Role::Admin | Role::Service => true,
            Role::Staff => self.stores.iter().any(|s| s == store_id),
            Role::Customer => false,
        }
    }

    /// 403 unless the caller acts for `store_id`.
    pub fn require_store(&self, store_id: &str) -> Result<(), Problem> {
        if self.acts_for_store(store_id) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "not allowed to act on store {store_id}"
            )))
        }
    }

    /// A stable identity for idempotency keys, ownership and audit (`role:id`; the id keeps
    /// its case, so `Alice` and `alice` stay two callers).
    pub fn identity(&self) -> String {
        format!("{}:{}", self.role.as_str(), self.id)
    }
}

fn bearer(req: &HttpRequest) -> Result<&str, Problem> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| Problem::unauthorized("an Authorization: Bearer token is required"))?;
    let value = header
        .to_str()
        .map_err(|_| Problem::unauthorized("the Authorization header is not text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| Problem::unauthorized("the Authorization scheme must be Bearer"))?;
    Ok(token.trim())
}

impl FromRequest for Caller {
    type Error = Problem;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let result = (|| {
            let auth = req
                .app_data::<web::Data<Authenticator>>()
                .ok_or_else(Problem::internal)?;
            auth.verify(bearer(req)?)
        })();
        ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_with_its_roles_and_stores() -> Result<(), Box<dyn std::error::Error>>
    {
        let token = mint_for("s3cret", "u1", Role::Staff, &["S1"], 60)?;
        let caller = Authenticator::new("s3cret")?.verify(&token)?;
        assert_eq!(caller.id, "u1");
        assert!(caller.acts_for_store("S1"));
        assert!(!caller.acts_for_store("S2"));
        assert_eq!(caller.identity(), "staff:u1");
        Ok(())
    }

    #[test]
    fn identities_keep_the_case_of_the_subject() -> Result<(), Box<dyn std::error::Error>> {
        let a = mint_for("s3cret", "Alice", Role::Customer, &[], 60)?;
        let b = mint_for("s3cret", "alice", Role::Customer, &[], 60)?;
        let auth = Authenticator::new("s3cret")?;
        assert_ne!(auth.verify(&a)?.identity(), auth.verify(&b)?.identity());
        Ok(())
    }

    #[test]
    fn an_expired_or_foreign_token_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let expired = mint_for("s3cret", "u1", Role::Admin, &[], -60)?;
        let refused = Authenticator::new("s3cret")?.verify(&expired).err();
        assert_eq!(refused.map(|p| p.status), Some(401));
        let other = mint_for("other", "u1", Role::Admin, &[], 60)?;
        assert!(Authenticator::new("s3cret")?.verify(&other).is_err());
        Ok(())
    }
}
