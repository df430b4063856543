//! Tenants, tokens, budgets, queues, drains and when each node was last seen.

use super::*;
use crate::domain::{QueueDef, QueueName};

impl Ledger {
    // --- tenants and tokens -------------------------------------------------

    pub fn put_tenant(&self, t: &TenantRecord) -> Result<()> {
        self.tenants.insert(t.name.as_str(), encode(t))?;
        Ok(())
    }

    pub fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>> {
        self.tenants.get(name)?.map(|b| decode("tenants", &b)).transpose()
    }

    pub fn tenants(&self) -> Result<Vec<TenantRecord>> {
        self.tenants
            .iter()
            .values()
            .map(|b| decode("tenants", &b?))
            .collect()
    }

    pub fn put_token(&self, hash: &[u8; 32], t: &TokenRecord) -> Result<()> {
        self.tokens.insert(hash, encode(t))?;
        Ok(())
    }

    pub fn tokens(&self) -> Result<Vec<([u8; 32], TokenRecord)>> {
        let mut out = Vec::new();
        for kv in self.tokens.iter() {
            let (k, v) = kv?;
            let Ok(hash) = <[u8; 32]>::try_from(k.as_ref()) else {
                continue;
            };
            out.push((hash, decode("tokens", &v)?));
        }
        Ok(out)
    }

    // --- node drains ----------------------------------------------------------

    pub fn put_drain(&self, node: &NodeName, reason: &str) -> Result<()> {
        self.drains.insert(node.as_str(), reason.as_bytes())?;
        Ok(())
    }

    pub fn remove_drain(&self, node: &NodeName) -> Result<()> {
        self.drains.remove(node.as_str())?;
        Ok(())
    }

    /// Drained nodes and the reasons given.
    pub fn drains(&self) -> Result<Vec<(NodeName, String)>> {
        let mut out = Vec::new();
        for kv in self.drains.iter() {
            let (k, v) = kv?;
            if let Ok(name) = String::from_utf8_lossy(&k).parse::<NodeName>() {
                out.push((name, String::from_utf8_lossy(&v).into_owned()));
            }
        }
        Ok(out)
    }

    // --- budgets --------------------------------------------------------------

    pub fn put_budget(&self, b: &Budget) -> Result<()> {
        self.injected_fault()?;
        self.budgets.insert(b.tenant.as_str(), encode(b))?;
        Ok(())
    }

    pub fn remove_budget(&self, tenant: &TenantName) -> Result<()> {
        self.injected_fault()?;
        self.budgets.remove(tenant.as_str())?;
        Ok(())
    }

    pub fn budgets(&self) -> Result<Vec<Budget>> {
        self.budgets
            .iter()
            .values()
            .map(|b| decode("budgets", &b?))
            .collect()
    }

    // --- queues ---------------------------------------------------------------

    /// Stores a queue made or changed over the API.
    pub fn put_queue(&self, q: &QueueDef) -> Result<()> {
        self.injected_fault()?;
        self.queues.insert(q.name.as_str(), encode(q))?;
        Ok(())
    }

    pub fn remove_queue(&self, name: &QueueName) -> Result<()> {
        self.injected_fault()?;
        self.queues.remove(name.as_str())?;
        Ok(())
    }

    /// The queues made over the API, by name.
    pub fn queues(&self) -> Result<Vec<QueueDef>> {
        self.queues
            .iter()
            .values()
            .map(|q| decode("queues", &q?))
            .collect()
    }

    /// Records when a node was last heard from.
    pub fn put_node_seen(&self, node: &NodeName, at: UnixMillis) -> Result<()> {
        self.nodes_seen.insert(node.as_str(), &at.0.to_be_bytes())?;
        Ok(())
    }

    /// When each node was last heard from.
    pub fn nodes_seen(&self) -> Result<Vec<(NodeName, UnixMillis)>> {
        let mut out = Vec::new();
        for kv in self.nodes_seen.iter() {
            let (k, v) = kv?;
            let (Ok(name), Ok(ms)) = (
                String::from_utf8_lossy(&k).parse::<NodeName>(),
                <[u8; 8]>::try_from(v.as_ref()),
            ) else {
                continue;
            };
            out.push((name, UnixMillis(u64::from_be_bytes(ms))));
        }
        Ok(out)
    }

    pub fn remove_token(&self, hash: &[u8; 32]) -> Result<bool> {
        Ok(self.tokens.remove(hash)?.is_some())
    }
}
