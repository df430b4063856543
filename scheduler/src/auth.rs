//! Tenants and bearer tokens. Tokens are random secrets shown once; only
//! their SHA-256 is stored. Lookups are served from memory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::domain::{NodeName, TenantName, UnixMillis};
use crate::ledger::{Ledger, LedgerError, Role, TenantRecord, TokenRecord};

/// The authenticated caller of an RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    pub token_id: String,
    /// An agent token's node.
    pub node: Option<NodeName>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The tenant a tenant token belongs to.
    pub fn tenant(&self) -> Option<&TenantName> {
        match &self.role {
            Role::Tenant(t) => Some(t),
            _ => None,
        }
    }

    /// Whether this caller may see and change jobs of `tenant`.
    pub fn may_access(&self, tenant: &TenantName) -> bool {
        match &self.role {
            Role::Admin => true,
            Role::Tenant(t) => t == tenant,
            Role::Agent => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("tenant {0} already exists")]
    TenantExists(TenantName),
    #[error("tenant {0} not found")]
    NoSuchTenant(TenantName),
    #[error("token {0} not found")]
    NoSuchToken(String),
    #[error(
        "this request id already issued token {0}; a secret is shown only once: revoke it and issue another"
    )]
    AlreadyIssued(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl crate::domain::ServiceError for AuthError {
    fn code(&self) -> crate::domain::ErrorCode {
        use crate::domain::ErrorCode as C;
        match self {
            AuthError::TenantExists(_) | AuthError::AlreadyIssued(_) => C::AlreadyExists,
            AuthError::NoSuchTenant(_) | AuthError::NoSuchToken(_) => C::NotFound,
            AuthError::Ledger(l) => l.code(),
        }
    }
}

#[derive(Clone)]
pub struct Auth {
    ledger: Ledger,
    by_hash: Arc<RwLock<HashMap<[u8; 32], TokenRecord>>>,
    /// Ids of tokens as they are revoked, for open streams to end.
    revoked: tokio::sync::broadcast::Sender<String>,
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Auth {
    pub fn load(ledger: Ledger) -> Result<Self, LedgerError> {
        let by_hash = ledger.tokens()?.into_iter().collect();
        Ok(Auth {
            ledger,
            by_hash: Arc::new(RwLock::new(by_hash)),
            revoked: tokio::sync::broadcast::channel(64).0,
        })
    }

    /// The caller a bearer secret stands for, if any.
    pub fn authenticate(&self, secret: &str) -> Option<Caller> {
        let h = hash(secret);
        let map = self.by_hash.read().unwrap_or_else(|e| e.into_inner());
        map.get(&h).map(|r| Caller {
            role: r.role.clone(),
            token_id: r.id.clone(),
            node: r.node.clone(),
        })
    }

    pub async fn create_tenant(&self, name: TenantName, now: UnixMillis) -> Result<TenantRecord, AuthError> {
        self.create_tenant_once(name, None, now).await
    }

    /// Creates a tenant; a retry under the same idempotency key (within a
    /// day) returns the tenant the first call created.
    pub async fn create_tenant_once(
        &self,
        name: TenantName,
        request_id: Option<String>,
        now: UnixMillis,
    ) -> Result<TenantRecord, AuthError> {
        if let Some(existing) = self.ledger.get_tenant(name.as_str())? {
            let retried = request_id.is_some()
                && existing.request_id == request_id
                && now.since(existing.created_at) < crate::engine::REQUEST_ID_TTL;
            return if retried {
                Ok(existing)
            } else {
                Err(AuthError::TenantExists(name))
            };
        }
        let rec = TenantRecord {
            name,
            created_at: now,
            request_id,
        };
        self.ledger.put_tenant(&rec)?;
        self.ledger.flush().await?;
        Ok(rec)
    }

    /// Creates the tenant if it does not exist yet.
    pub async fn ensure_tenant(&self, name: TenantName, now: UnixMillis) -> Result<TenantRecord, AuthError> {
        match self.ledger.get_tenant(name.as_str())? {
            Some(t) => Ok(t),
            None => self.create_tenant(name, now).await,
        }
    }

    pub fn tenant_exists(&self, name: &TenantName) -> Result<bool, LedgerError> {
        Ok(self.ledger.get_tenant(name.as_str())?.is_some())
    }

    pub fn tenants(&self) -> Result<Vec<TenantRecord>, LedgerError> {
        self.ledger.tenants()
    }

    /// Issues a new token; returns the secret (shown once) and its record.
    pub async fn issue(
        &self,
        role: Role,
        description: String,
        now: UnixMillis,
    ) -> Result<(String, TokenRecord), AuthError> {
        self.issue_for(role, None, description, None, now).await
    }

    /// Issues an agent token that may register only `node`.
    pub async fn issue_agent(
        &self,
        node: NodeName,
        description: String,
        now: UnixMillis,
    ) -> Result<(String, TokenRecord), AuthError> {
        self.issue_for(Role::Agent, Some(node), description, None, now)
            .await
    }

    /// Issues a token (an agent's when `node` is given) under an
    /// idempotency key: a retry of a call that did issue one within a day
    /// is refused naming the token, never answered with a second token.
    pub async fn issue_for(
        &self,
        role: Role,
        node: Option<NodeName>,
        description: String,
        request_id: Option<String>,
        now: UnixMillis,
    ) -> Result<(String, TokenRecord), AuthError> {
        if request_id.is_some() {
            let map = self.by_hash.read().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = map.values().find(|t| {
                t.request_id == request_id && now.since(t.created_at) < crate::engine::REQUEST_ID_TTL
            }) {
                return Err(AuthError::AlreadyIssued(t.id.clone()));
            }
        }
        if let Role::Tenant(t) = &role
            && !self.tenant_exists(t)?
        {
            return Err(AuthError::NoSuchTenant(t.clone()));
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = format!("allot_{}", hex::encode(bytes));
        let h = hash(&secret);
        let rec = TokenRecord {
            id: hex::encode(&h[..6]),
            role,
            description,
            created_at: now,
            node,
            request_id,
        };
        self.ledger.put_token(&h, &rec)?;
        self.ledger.flush().await?;
        self.by_hash
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(h, rec.clone());
        Ok((secret, rec))
    }

    pub fn tokens(&self) -> Vec<TokenRecord> {
        let map = self.by_hash.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<TokenRecord> = map.values().cloned().collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    pub async fn revoke(&self, id: &str) -> Result<(), AuthError> {
        let found = {
            let map = self.by_hash.read().unwrap_or_else(|e| e.into_inner());
            map.iter().find(|(_, r)| r.id == id).map(|(h, _)| *h)
        };
        let Some(h) = found else {
            return Err(AuthError::NoSuchToken(id.to_string()));
        };
        self.ledger.remove_token(&h)?;
        self.ledger.flush().await?;
        self.by_hash.write().unwrap_or_else(|e| e.into_inner()).remove(&h);
        let _ = self.revoked.send(id.to_string());
        Ok(())
    }

    /// Token ids as they are revoked from now on: a stream opened with one
    /// ends when it is.
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.revoked.subscribe()
    }

    /// Whether the token of this id is still valid.
    pub fn is_valid(&self, token_id: &str) -> bool {
        let map = self.by_hash.read().unwrap_or_else(|e| e.into_inner());
        map.values().any(|r| r.id == token_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_stored_only_as_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let auth = Auth::load(ledger.clone()).unwrap();
        let now = UnixMillis(1);
        let tenant: TenantName = "a".parse().unwrap();
        assert!(matches!(
            auth.issue(Role::Tenant(tenant.clone()), String::new(), now).await,
            Err(AuthError::NoSuchTenant(_))
        ));
        auth.create_tenant(tenant.clone(), now).await.unwrap();
        let (secret, rec) = auth
            .issue(Role::Tenant(tenant.clone()), "ci".into(), now)
            .await
            .unwrap();
        assert!(secret.starts_with("allot_") && secret.len() == 70);
        let stored = ledger.tokens().unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].0, hash(&secret));
        let raw = serde_json::to_string(&stored[0].1).unwrap();
        assert!(!raw.contains(&secret[6..]), "the secret must not be stored");

        let caller = auth.authenticate(&secret).unwrap();
        assert_eq!(caller.tenant(), Some(&tenant));
        assert!(auth.authenticate("allot_nope").is_none());
        // A fresh load (a restart) knows the token too.
        let reloaded = Auth::load(ledger.clone()).unwrap();
        assert!(reloaded.authenticate(&secret).is_some());
        auth.revoke(&rec.id).await.unwrap();
        assert!(auth.authenticate(&secret).is_none());
        assert!(matches!(
            auth.revoke(&rec.id).await,
            Err(AuthError::NoSuchToken(_))
        ));
    }
}
